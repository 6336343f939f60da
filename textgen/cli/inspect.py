"""``textgen inspect``: what a run's model expects at every character, and which cells track what.

Loaded only when the command runs (``lazy_commands`` in ``textgen.cli.commands``); it needs numpy
and the numpy engine, never TensorFlow.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from textgen.cli.commands import _numpy_command


@click.command()
@click.argument("run_dir", metavar="RUN", type=click.Path())
@click.argument("text_file", required=False, type=click.Path(dir_okay=False, allow_dash=True))
@click.option("--text", "text_string", metavar="STRING", help="Inspect this text (not a file).")
@click.option(
    "--layer",
    type=int,
    help="Recurrent layer whose cells are reported, from 0 at the input. [default: the top one]",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["html", "jsonl"]),
    default="html",
    show_default=True,
    help="A self-contained HTML report, or one JSON line per character.",
)
@click.option(
    "--output",
    "-o",
    type=click.Path(dir_okay=False, allow_dash=True),
    default="-",
    metavar="PATH",
    help="Write the report here ('-': stdout); a file is replaced only once it is complete.",
)
@click.option(
    "--feature",
    "features",
    multiple=True,
    metavar="NAME=REGEX",
    help="Also rank cells for the characters inside the regex's matches (repeatable).",
)
@click.option(
    "--best",
    type=click.IntRange(1, 100),
    default=5,
    show_default=True,
    help="Cells reported per feature.",
)
@click.option("--which", type=click.Choice(["best", "latest"]), default="best", show_default=True)
@click.option(
    "--drop-unknown",
    is_flag=True,
    help="Drop characters the model never saw instead of failing.",
)
@click.option("--encoding", default="utf-8", show_default=True, help="Encoding of TEXT_FILE.")
@click.option(
    "--errors",
    type=click.Choice(["strict", "replace"]),
    default="strict",
    show_default=True,
    help="Undecodable bytes of TEXT_FILE: fail, or read them as U+FFFD.",
)
@_numpy_command
def inspect(
    run_dir, text_file, text_string, layer, fmt, output, features, best, which, drop_unknown,
    encoding, errors,
) -> None:  # fmt: skip
    """Guesses and cell states of a model on a text.

    Reads the text (TEXT_FILE, '-' for stdin, or --text) from a zero state and reports for
    every character its probability, the model's top 5 guesses and the layer's state, and the
    cells that best follow quotes, brackets, line position, indentation and words (and each
    --feature).
    """
    if (text_file is None) == (text_string is None):
        raise click.UsageError("give the text as TEXT_FILE or as --text, one of the two")
    from textgen.sample import BUILTIN_FEATURES, Inspector, parse_feature, write_report

    chosen = [*BUILTIN_FEATURES, *(parse_feature(spec) for spec in features)]
    text = text_string if text_file is None else _read(text_file, encoding, errors)
    inspector = Inspector.from_run(run_dir, which)
    name = Path(run_dir).resolve().name
    write_report(
        inspector, text, output, fmt=fmt, name=name, layer=layer, features=chosen, best=best,
        drop_unknown=drop_unknown,
    )  # fmt: skip


def _read(text_file: str, encoding: str, errors: str) -> str:
    import codecs

    from textgen.corpus import decoded_chunks
    from textgen.errors import CorpusError

    try:
        codecs.lookup(encoding)
    except LookupError:
        raise CorpusError(f"unknown encoding {encoding!r}") from None
    if text_file == "-":
        raw = sys.stdin.buffer.read()
        try:
            return raw.decode(encoding, errors)
        except UnicodeDecodeError as err:
            raise CorpusError(f"stdin is not valid {encoding}: bad byte at {err.start}") from None
    return "".join(decoded_chunks([Path(text_file)], encoding, errors))
