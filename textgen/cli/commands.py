"""The ``textgen`` command: a thin layer that parses options, calls the library and prints.

Importing this module loads click and nothing heavy: numpy, TensorFlow, the training and corpus
code are imported inside the commands that need them, so ``--help`` and usage errors answer at
once and ``textgen sample`` (numpy only) never pays for TensorFlow.
"""

from __future__ import annotations

import functools
import json
import math
import os
import re
import sys
from pathlib import Path

from textgen.cores import blas_threads

# Users choose numpy's BLAS threads by setting the variable themselves; the server then keeps
# their choice instead of following the load.
BLAS_THREADS_CHOSEN = "OPENBLAS_NUM_THREADS" in os.environ
# Quiet TensorFlow's C++ log for command-line users, unless they chose a level.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import click  # noqa: E402

from textgen import __version__  # noqa: E402
from textgen.cells import CELLS  # noqa: E402
from textgen.cli.group import TextgenGroup  # noqa: E402
from textgen.config import DEFAULT_CORPUS, LR_SCHEDULES, TrainConfig  # noqa: E402
from textgen.errors import TextgenError  # noqa: E402
from textgen.precision import PRECISIONS  # noqa: E402
from textgen.sample import CHUNK_STREAMS  # noqa: E402
from textgen.serve import Limits  # noqa: E402
from textgen.training import DEVICES, DISTRIBUTE  # noqa: E402

_DURATION = re.compile(
    r"^\s*(?:(\d+(?:\.\d+)?)h)?\s*(?:(\d+(?:\.\d+)?)m)?\s*(?:(\d+(?:\.\d+)?)s?)?\s*$"
)


class Duration(click.ParamType):
    """A wall-clock budget: ``90`` or ``90s`` (seconds), ``10m``, ``1h``, ``1h30m``."""

    name = "duration"

    def convert(self, value, param, ctx):
        if isinstance(value, (int, float)):
            return float(value)
        match = _DURATION.match(str(value))
        if not match or not any(match.groups()):
            self.fail(f"{value!r} is not a duration like 90s, 10m or 1h30m", param, ctx)
        hours, minutes, seconds = (float(g) if g else 0.0 for g in match.groups())
        total = hours * 3600 + minutes * 60 + seconds
        if total <= 0:
            self.fail("the duration must be positive", param, ctx)
        return total


def _finite(ctx, param, value):
    if value is not None and not math.isfinite(value):
        raise click.BadParameter("must be a finite number")
    return value


@click.group(
    cls=TextgenGroup,
    lazy_commands={"corpus": "textgen.cli.corpus", "inspect": "textgen.cli.inspect"},
    context_settings={"help_option_names": ["-h", "--help"]},
)
@click.version_option(version=__version__, package_name="textgen")
def main() -> None:
    """Train a character-level LSTM on any text, then generate text in its style."""


def _numpy_command(command):
    """Give numpy's BLAS the cores idle right now, just before ``command`` runs.

    numpy's BLAS reads its thread count once, when numpy loads, which the commands do inside
    their bodies. Sampling does one small matrix product per character; BLAS threads that find
    their core busy wait for it at every product (on 2 cores with one other busy process, two
    threads sampled 1.7x slower than one; on an idle machine 1.6x faster). The measurement takes
    50 ms, so it is made here, once the arguments have parsed, and never for ``--help`` or a
    usage error.
    """

    @functools.wraps(command)
    def run(*args, **kwargs):
        if not BLAS_THREADS_CHOSEN:
            os.environ["OPENBLAS_NUM_THREADS"] = str(blas_threads())
        return command(*args, **kwargs)

    return run


_TRAIN_DEFAULTS = TrainConfig()
_LIMITS = Limits()


def _default(name: str) -> str:
    return f" [default: {getattr(_TRAIN_DEFAULTS, name)}]"


@main.command(
    help="Train a model on CORPUS: a text file, folder, glob or corpus name "
    f"(default: {DEFAULT_CORPUS})."
)
@click.argument("corpus", required=False)
@click.option(
    "--epochs",
    type=click.IntRange(min=1),
    help="Epochs to train in total. [default: 20, or with --max-time as many as it allows]",
)
@click.option(
    "--batch-size", type=click.IntRange(min=1), help="Windows per batch." + _default("batch_size")
)
@click.option(
    "--seq-length",
    type=click.IntRange(min=1),
    help="Characters per window." + _default("seq_length"),
)
@click.option(
    "--embedding-dim",
    type=click.IntRange(min=1),
    help="Embedding size." + _default("embedding_dim"),
)
@click.option(
    "--units", type=click.IntRange(min=1), help="Units per recurrent layer." + _default("units")
)
@click.option(
    "--layers",
    "num_layers",
    type=click.IntRange(min=1),
    help="Recurrent layers." + _default("num_layers"),
)
@click.option(
    "--cell",
    type=click.Choice(list(CELLS)),
    help="Recurrent cell." + _default("cell"),
)
@click.option(
    "--dropout",
    type=click.FloatRange(0, 1, max_open=True),
    help="Dropout rate." + _default("dropout"),
)
@click.option(
    "--weight-drop",
    type=click.FloatRange(0, 1, max_open=True),
    help="DropConnect rate on the LSTM recurrent kernels." + _default("weight_drop"),
)
@click.option(
    "--embedding-dropout",
    type=click.FloatRange(0, 1, max_open=True),
    help="Share of characters dropped from the embedding each step."
    + _default("embedding_dropout"),
)
@click.option(
    "--weight-decay",
    type=click.FloatRange(0),
    callback=_finite,
    help="Decoupled weight decay of the weight matrices." + _default("weight_decay"),
)
@click.option(
    "--learning-rate",
    type=click.FloatRange(0, min_open=True),
    callback=_finite,
    help="Adam's peak learning rate." + _default("learning_rate"),
)
@click.option(
    "--lr-schedule",
    type=click.Choice(LR_SCHEDULES),
    help="Learning-rate schedule: cosine decays to half the peak by the end of the run; auto is "
    "constant while --weight-average is on, else cosine." + _default("lr_schedule"),
)
@click.option(
    "--clip-norm",
    type=click.FloatRange(0),
    callback=_finite,
    help="Clip gradients to this global norm; 0 disables." + _default("clip_norm"),
)
@click.option(
    "--weight-average",
    type=click.FloatRange(0, 1, max_open=True),
    help="Validate, and keep as best.npz, a moving average of the weights with this decay per "
    "step (0.998 averages about the last 500 steps, after an early cap that spans the last ninth "
    "of the steps so far); 0 turns it off." + _default("weight_average"),
)
@click.option(
    "--validation-split",
    type=click.FloatRange(0, 1, max_open=True),
    help="Fraction held out from the end of the text." + _default("validation_split"),
)
@click.option(
    "--validation-context",
    type=click.IntRange(min=0),
    help="Characters read before each scored validation window; 0 starts each window from a "
    "zero state." + _default("validation_context"),
)
@click.option(
    "--seed", type=int, help="Random seed (weights, data order, dropout)." + _default("seed")
)
@click.option(
    "--max-time",
    type=Duration(),
    help="Wall-clock budget, e.g. 10m. Without --epochs it is the plan: the schedule spans it "
    "and training goes on until it is spent, and with no shape given the LSTM's size is chosen "
    "for it (docs/training.md); with --epochs, whichever ends first.",
)
@click.option(
    "--patience",
    type=click.IntRange(min=1),
    help="Stop after this many epochs without a better validation loss.",
)
@click.option(
    "--max-vocab",
    type=click.IntRange(min=1),
    help="Keep the N most frequent characters; map the rest to one unknown id.",
)
@click.option("--encoding", help="Text encoding of the corpus files. [default: utf-8]")
@click.option(
    "--errors",
    type=click.Choice(["strict", "replace"]),
    help="Undecodable bytes: error (strict) or replace. [default: strict]",
)
@click.option(
    "--checkpoint-dir",
    type=click.Path(file_okay=False),
    help="Run directory. [default: checkpoints/<corpus name>]",
)
@click.option(
    "--sample-every",
    type=click.IntRange(min=0),
    help="Print a short sample after every N epochs; 0 turns it off." + _default("sample_every"),
)
@click.option(
    "--tensorboard/--no-tensorboard",
    default=None,
    help="Write TensorBoard event files under RUN/tensorboard. [default: on]",
)
@click.option(
    "--precision",
    type=click.Choice(list(PRECISIONS)),
    help="Operands of the LSTM's large matrix products; auto: bfloat16 where the CPU (AVX512-BF16, "
    "AMX) or a GPU multiplies it natively, else float32." + _default("precision"),
)
@click.option(
    "--distribute",
    type=click.Choice(DISTRIBUTE),
    default="none",
    show_default=True,
    help="Train on one process (none), this machine's GPUs (mirrored) or a cluster of workers "
    "described by TF_CONFIG (multi-worker; every worker runs the same command).",
)
@click.option(
    "--device",
    type=click.Choice(DEVICES),
    default="auto",
    show_default=True,
    help="gpu trains LSTMs through Keras's cuDNN layer, cpu through textgen's CPU-tuned step; "
    "auto takes the GPU when TensorFlow sees one.",
)
@click.option(
    "--init-from",
    metavar="SOURCE",
    help="Start from a trained run directory or a shipped model (base), with its shape and a "
    "vocabulary merged from both.",
)
@click.option("--resume", is_flag=True, help="Continue the run in the run directory.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@_numpy_command
def train(corpus, checkpoint_dir, resume, quiet, distribute, device, init_from, **options) -> None:
    """Train a model on a corpus (the help text is the decorator's, which names the default)."""
    from textgen import train

    settings = {k: v for k, v in options.items() if v is not None}
    result = train(
        corpus,
        run_dir=checkpoint_dir,  # None: train() picks checkpoints/<corpus name>
        resume=resume,
        progress=not quiet,
        echo=click.echo,
        distribute=distribute,
        device=device,
        init_from=init_from,
        **settings,
    )
    best = "n/a" if result.best_val_loss is None else f"{result.best_val_loss:.4f} nats"
    click.echo(
        f"{result.stopped.replace('_', ' ')} after {result.epochs_done:.2f} epochs "
        f"({result.plan}); "
        f"best loss {best}; run saved in {result.run_dir}"
    )


def _pick_run(checkpoint: str | None) -> Path:
    from textgen.run import find_latest_run

    return Path(checkpoint) if checkpoint else find_latest_run()


def _stop_strings(ctx, param, value):
    if any(s == "" for s in value):
        raise click.BadParameter("a stop string must not be empty")
    return value


@main.command()
@click.option(
    "--checkpoint",
    type=click.Path(),
    help="Run directory. [default: the newest under checkpoints/]",
)
@click.option(
    "--temperature",
    type=click.FloatRange(0),
    callback=_finite,
    default=1.0,
    show_default=True,
    help="Randomness; 0 is greedy.",
)
@click.option(
    "--top-k", type=click.IntRange(min=1), help="Draw only from the K most likely characters."
)
@click.option(
    "--top-p",
    type=click.FloatRange(0, 1, min_open=True),
    help="Draw only from the smallest set reaching probability P.",
)
@click.option(
    "--length",
    type=click.IntRange(min=0),
    default=500,
    show_default=True,
    help="Characters per sample; 0 streams until Ctrl-C.",
)
@click.option("--prime", default="", help="Text to start from (fed through the model first).")
@click.option(
    "--drop-unknown",
    is_flag=True,
    help="Drop prime characters the model never saw instead of failing.",
)
@click.option("--seed", type=int, help="Random seed; the same seed gives the same text.")
@click.option(
    "--num-samples",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help=f"Samples, generated together, up to {CHUNK_STREAMS} streams at a time.",
)
@click.option(
    "--stop",
    multiple=True,
    callback=_stop_strings,
    help="End a sample when it produces this string (repeatable).",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["text", "jsonl"]),
    default="text",
    show_default=True,
    help="Output format.",
)
@click.option(
    "--output",
    type=click.Path(dir_okay=False, allow_dash=True),
    metavar="PATH",
    help="Write the samples here instead of stdout: a file is replaced atomically, "
    "a device or FIFO written through, a symlink's target replaced; '-' is stdout.",
)
@click.option(
    "--which",
    type=click.Choice(["best", "latest"]),
    default="best",
    show_default=True,
    help="Which checkpoint of the run.",
)
@click.option(
    "--beam-width",
    type=click.IntRange(min=1),
    help="Print the likeliest continuation a beam search of this width finds, instead of "
    "sampling (no --temperature, --top-k, --top-p, --seed or --num-samples).",
)
@click.option(
    "--best-of",
    # Its samples are drawn as one batch, so it is bounded like one chunk of streams.
    type=click.IntRange(1, CHUNK_STREAMS),
    help="Draw N samples and print the --num-samples of them with the highest mean "
    "log-probability per character, best first.",
)
@click.option(
    "--max-copy",
    type=click.IntRange(min=0),
    metavar="N",
    help="Draw again any sample that copies more than N characters of the training corpus "
    "verbatim (up to 20 draws each).",
)
@click.option(
    "--show-copy",
    is_flag=True,
    help="After each sample, say on stderr how long the longest span it copies from the "
    "training corpus is (JSON lines always carry it as longest_copy).",
)
@_numpy_command
def sample(
    checkpoint,
    temperature,
    top_k,
    top_p,
    length,
    prime,
    drop_unknown,
    seed,
    num_samples,
    stop,
    fmt,
    output,
    which,
    beam_width,
    best_of,
    max_copy,
    show_copy,
) -> None:
    """Generate text from a trained run, printed as it is produced."""
    ctx = click.get_current_context()
    _check_search_options(ctx, beam_width, best_of)
    if max_copy is not None and (beam_width is not None or best_of is not None or length == 0):
        raise click.UsageError("--max-copy needs a finite --length and no --beam-width or "
                               "--best-of", ctx)  # fmt: skip
    from textgen.sample import Sampler, SamplingOptions, random_seed, write_samples

    run_dir = _pick_run(checkpoint)
    checker = None
    if fmt == "jsonl" or show_copy or max_copy is not None:
        from textgen.sample import copy_checker, copy_checker_or_warn

        checker = copy_checker(run_dir) if max_copy is not None else copy_checker_or_warn(run_dir)
    annotate = None
    if fmt == "jsonl":
        annotate = lambda text: {"longest_copy": checker and checker.longest_copy(text)}  # noqa: E731
    if beam_width is not None:
        sampler = Sampler.from_checkpoint(run_dir, which=which)
        found = sampler.beam_search(
            prime, length, beam_width, stop=stop, drop_unknown=drop_unknown
        ).text
        streams = lambda first, count: [[found]]  # noqa: E731
        write_samples(streams, 1, prime=prime, fmt=fmt, output=output, annotate=annotate)
        _show_copies(checker if show_copy else None, [found])
        return
    options = SamplingOptions(
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        # One seed for every chunk of streams, so that sample i draws from (seed, i) in any chunk.
        seed=random_seed() if seed is None else seed,
        prime=prime,
        drop_unknown=drop_unknown,
        stop=stop,
    )
    sampler = Sampler.from_checkpoint(run_dir, which=which)
    texts = None
    if best_of is not None:
        texts = sampler.generate_batch(num_samples, length, options=options, best_of=best_of)
    elif max_copy is not None:
        from textgen.sample import sample_within

        texts = sample_within(sampler, checker, num_samples, length, options, max_copy)
    shown: list[str] = []

    def stream(first: int, count: int):
        if texts is not None:
            pieces = [texts[first : first + count]]
        else:
            pieces = sampler.stream_batch(
                count, length or None, options=options, first_sample=first
            )
        return _kept(pieces, count, shown) if show_copy else pieces

    write_samples(stream, num_samples, prime=prime, fmt=fmt, output=output, annotate=annotate)
    _show_copies(checker if show_copy else None, shown)


def _kept(pieces, count: int, shown: list[str]):
    """Pass ``pieces`` on, keeping each stream's text in ``shown`` for ``--show-copy``."""
    parts: list[list[str]] = [[] for _ in range(count)]
    try:
        for step in pieces:
            for part, piece in zip(parts, step):
                part.append(piece)
            yield step
    finally:
        shown.extend("".join(part) for part in parts)


def _show_copies(checker, texts: list[str]) -> None:
    """``--show-copy``: each sample's longest copy from the corpus, on stderr."""
    if checker is None:
        return
    for i, text in enumerate(texts):
        copied = checker.longest_copy(text)
        click.echo(f"sample {i + 1}: longest copy of the corpus {copied} characters", err=True)


def _check_search_options(ctx: click.Context, beam_width: int | None, best_of: int | None):
    """Refuse combinations that mean nothing: a beam search draws no randomness and gives one
    text; both it and best-of need a finite --length; best-of needs as many draws as samples."""
    given = {
        name
        for name in ("temperature", "top_k", "top_p", "seed", "num_samples", "best_of")
        if ctx.get_parameter_source(name) not in (None, click.core.ParameterSource.DEFAULT)
    }
    if beam_width is not None:
        for name in sorted(given):
            flag = "--" + name.replace("_", "-")
            raise click.UsageError(f"--beam-width searches without sampling: drop {flag}", ctx)
    if (beam_width is not None or best_of is not None) and ctx.params["length"] == 0:
        flag = "--beam-width" if beam_width is not None else "--best-of"
        raise click.UsageError(f"{flag} needs a finite --length (not 0)", ctx)
    from textgen.sample import best_of_rows

    try:
        best_of_rows(ctx.params["num_samples"], best_of, ("--best-of", "--num-samples"))
    except TextgenError as err:
        raise click.UsageError(str(err), ctx) from None


@main.command()
@click.argument("run_dirs", nargs=-1, type=click.Path())
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=int, default=8000, show_default=True, help="Port to listen on.")
@click.option("--api-key", envvar="TEXTGEN_API_KEY", help="Require Authorization: Bearer KEY.")
@click.option("--drop-unknown", is_flag=True, help="Drop unknown prompt characters, not 400.")
@click.option("--which", type=click.Choice(["best", "latest"]), default="best", show_default=True)
@click.option("--max-streams", type=click.IntRange(1), default=_LIMITS.max_streams,
              show_default=True, help="Choices generated at once; more get 429.")  # fmt: skip
@click.option("--max-tokens", type=click.IntRange(1), default=_LIMITS.max_tokens,
              show_default=True, help="Largest max_tokens a request may ask for.")  # fmt: skip
@click.option("--max-prompt", type=click.IntRange(1), default=_LIMITS.max_prompt,
              show_default=True, help="Characters per prompt.")  # fmt: skip
@click.option("--max-body", type=click.IntRange(1), default=_LIMITS.max_body,
              show_default=True, help="Bytes per request body; more get 413.")  # fmt: skip
@click.option("--request-timeout", type=Duration(), default=_LIMITS.request_timeout,
              show_default=True, help="Time limit per request.")  # fmt: skip
@click.option("--chat-template", metavar="TEXT",
              help="Each chat message's layout, with {content} and optionally {role} and "
              "{name}; \\n is a newline. The reply stops at what follows {content}. "
              "[default: '{content}\\n\\n']")  # fmt: skip
@click.option("--chat-reply-prefix", metavar="TEXT",
              help="Text that opens a chat reply. [default: the template up to {content}, "
              "for the assistant]")  # fmt: skip
@click.option("--allow-origin", "allow_origins", metavar="ORIGIN", multiple=True,
              help="Let pages from this origin (https://host:port, or *) call the API "
              "(repeatable). [default: none, no CORS headers]")  # fmt: skip
@_numpy_command
def serve(
    run_dirs, host, port, api_key, drop_unknown, which, chat_template, chat_reply_prefix,
    allow_origins, **limits,
) -> None:  # fmt: skip
    """Serve runs with OpenAI's completions and chat APIs and a writing page at /."""
    try:
        from textgen.serve import serve
    except ImportError as err:
        raise TextgenError(f"textgen serve needs the serve extra ({err.name} is missing): "
                           "pip install 'textgen[serve]'") from None  # fmt: skip
    from textgen.sample import ChatTemplate

    runs = [Path(d) for d in run_dirs] or [_pick_run(None)]
    options = dict(host=host, port=port, api_key=api_key, drop_unknown=drop_unknown)
    options["chat_template"] = ChatTemplate.from_options(chat_template, chat_reply_prefix)
    options["allow_origins"] = allow_origins
    # The BLAS threads follow the idle cores while serving, unless the user chose a count.
    options["adapt_blas_threads"] = not BLAS_THREADS_CHOSEN
    serve(runs, limits=Limits(**limits), which=which, **options)


@main.command()
@click.argument("run_dir", type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="Print config.json's content as JSON only.")
@_numpy_command
def info(run_dir, as_json) -> None:
    """Show a run's settings, vocabulary, progress and model summary."""
    from textgen.training import describe_run, run_config_json

    click.echo(run_config_json(Path(run_dir)) if as_json else describe_run(Path(run_dir)))


@main.command(name="eval")
@click.argument("run_dir", type=click.Path())
@click.argument("text_file", type=click.Path())
@click.option("--which", type=click.Choice(["best", "latest"]), default="best", show_default=True)
@click.option(
    "--context",
    type=click.IntRange(min=0),
    help="Characters read before each scored window (0: each window from a zero state). "
    "[default: the run's validation context]",
)
@_numpy_command
def evaluate(run_dir, text_file, which, context) -> None:
    """Report a run's loss on TEXT_FILE in nats and bits per character."""
    from textgen.training import LN2, evaluate_file

    loss = evaluate_file(Path(run_dir), text_file, which=which, context=context)
    click.echo(json.dumps({"loss_nats": round(loss, 6), "bpc": round(loss / LN2, 6)}))


@main.command(name="export")
@click.argument("run_dir", metavar="RUN", type=click.Path())
@click.argument("out", type=click.Path())
@click.option(
    "--format",
    "fmt",
    metavar="keras|savedmodel|onnx|web",
    help="Artefact format; web is a folder holding an offline page. "
    "[default: from OUT's suffix, .keras or .onnx]",
)
@click.option("--which", type=click.Choice(["best", "latest"]), default="best", show_default=True)
@click.option(
    "--weights",
    type=click.Choice(["float16", "float32"]),
    help="The web page's weights: float16 is half the size, float32 exact. [default: float16]",
)
@click.option("--force", is_flag=True, help="Replace OUT if it exists.")
@_numpy_command
def export(run_dir, out, fmt, which, weights, force) -> None:
    """Export RUN's model to OUT for use without textgen (tokenizer.json goes beside it, or
    inside the web format's folder)."""
    if "tensorflow" not in sys.modules:  # hidden before it loads: an export is made on the CPU
        os.environ["CUDA_VISIBLE_DEVICES"] = "-1"
    from textgen.export import export_run

    path = export_run(Path(run_dir), Path(out), fmt, which=which, force=force, weights=weights)
    click.echo(f"exported {fmt or path.suffix[1:]} model to {path}")
