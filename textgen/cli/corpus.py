"""``textgen corpus``: list, fetch and inspect corpora by name."""

from __future__ import annotations

import click

from textgen.cli.group import TextgenGroup


@click.group(name="corpus", cls=TextgenGroup)
def corpus() -> None:
    """List, download and inspect training corpora.

    Corpora live in $TEXTGEN_CORPUS_DIR, or ./corpora if it is not set.
    """


@corpus.command(name="list")
def list_command() -> None:
    """Show built-in, downloadable and local corpora."""
    from textgen import corpus as corpora

    rows = corpora.list_corpora()
    width = max(len(row["name"]) for row in rows)
    click.echo(f"{'NAME':<{width}}  {'KIND':<9}  {'LOCAL':<5}  {'SIZE':>8}  DESCRIPTION")
    for row in rows:
        state = "ready" if row["available"] else "-"
        size = _human_size(row["size"]) if row["size"] is not None else "?"
        click.echo(
            f"{row['name']:<{width}}  {row['kind']:<9}  {state:<5}  {size:>8}  {row['description']}"
        )
    click.echo(f"\nCorpus directory: {corpora.corpus_dir().absolute()}")


@corpus.command(name="get")
@click.argument("name")
@click.option("--url", help="Download from this mirror instead; it must serve the same bytes.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar or notes.")
def get_command(name: str, url: str | None, quiet: bool) -> None:
    """Download or build corpus NAME if needed, and print the path of its text file."""
    from textgen import corpus as corpora

    click.echo(corpora.get_corpus(name, progress=not quiet, url=url))


@corpus.command(name="info")
@click.argument("spec", metavar="PATH_OR_NAME")
@click.option("--top", default=10, show_default=True, help="How many characters to list.")
def info_command(spec: str, top: int) -> None:
    """Show size, encoding and character counts of a corpus: a file, folder, glob or name."""
    from textgen.corpus import corpus_info

    info = corpus_info(spec, top=top)
    total = info["characters"]
    if info["files"] == 1:
        click.echo(f"File:        {info['path']}")
    else:
        click.echo(f"Files:       {info['files']:,} in {info['path']}")
    click.echo(f"Size:        {info['size_bytes']:,} bytes ({_human_size(info['size_bytes'])})")
    click.echo(f"Encoding:    {info['encoding']}")
    click.echo(f"Characters:  {total:,}")
    click.echo(f"Distinct:    {info['distinct']:,}")
    for title, pairs in (("Most", info["most_common"]), ("Least", info["least_common"])):
        if pairs:
            click.echo(f"{title} frequent:")
            for char, count in pairs:
                click.echo(f"  {_show_char(char):<16} {count:>14,}  {100 * count / total:7.3f}%")


def _show_char(char: str) -> str:
    """repr() keeps whitespace and invisible characters visible; those also get their code point."""
    if char.isprintable() and not char.isspace():
        return repr(char)
    return f"{char!r} U+{ord(char):04X}"


def _human_size(size: int) -> str:
    value, unit = float(size), "B"
    for bigger in ("kB", "MB", "GB"):
        if value < 1000:
            break
        value, unit = value / 1000, bigger
    return f"{size} B" if unit == "B" else f"{value:.1f} {unit}"
