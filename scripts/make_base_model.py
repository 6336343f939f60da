"""Rebuild ``base``, the pretrained model shipped inside textgen (``textgen/models/base``).

Usage::

    apt-get install -y python3.11-doc dict-gcide dict-devil jargon-text gnu-standards \
        debian-reference-en
    python scripts/make_base_model.py corpus /tmp/base-corpus      # assemble the text
    textgen train /tmp/base-corpus --checkpoint-dir /tmp/base-run --max-time 45m
    python scripts/make_base_model.py pack /tmp/base-run           # write textgen/models/base

The corpus is several megabytes of English prose and some code, all from Debian packages that
install offline (their licences are listed in ``SOURCES``). It is reduced to printable ASCII,
newlines and spaces, so the base vocabulary is small and every row of it well trained; a
fine-tuned run appends whatever else its own text holds. Debian's ``fortunes*`` packages, the
``/usr/share/dict`` word lists and Python's standard-library source are deliberately not used:
they stay held out for measuring how well ``base`` transfers.
"""

from __future__ import annotations

import argparse
import gzip
import html.parser
import re
import sys
from pathlib import Path

SOURCES = {
    # name: (Debian package, licence, what is taken)
    "python-docs": (
        "python3.11-doc",
        "PSF License",
        "reST sources of the tutorial, HOWTOs, FAQ, "
        "language reference, glossary and part of the library reference",
    ),
    "devil": ("dict-devil", "public domain", "Ambrose Bierce, The Devil's Dictionary"),
    "jargon": ("jargon-text", "public domain", "The Jargon File 4.4.7"),
    "gcide": (
        "dict-gcide",
        "GPL-3.0-or-later",
        "definitions from the GNU Collaborative "
        "International Dictionary of English (Webster's 1913)",
    ),
    "gnu-standards": (
        "gnu-standards",
        "GFDL-1.3-or-later",
        "GNU Coding Standards and Information for Maintainers of GNU Software",
    ),
    "debian-reference": (
        "debian-reference-en",
        "GPL-2.0-or-later",
        "Debian Reference, with its shell examples",
    ),
}
_PYDOCS = Path("/usr/share/doc/python3.11/html/_sources")
_BLOCK = {"p", "div", "br", "li", "pre", "h1", "h2", "h3", "h4", "h5", "tr", "dt", "dd", "table"}
_ASCII = {
    "\u2018": "'",
    "\u2019": "'",
    "\u201c": '"',
    "\u201d": '"',
    "\u2013": "-",
    "\u2014": "--",
    "\u2026": "...",
    "\u00a0": " ",
    "\t": "    ",
}


class _HtmlText(html.parser.HTMLParser):
    """The visible text of an HTML page, with a line break at each block element."""

    def __init__(self) -> None:
        super().__init__()
        self.parts: list[str] = []
        self.skip = 0

    def handle_starttag(self, tag, attrs):
        if tag in ("script", "style", "head"):
            self.skip += 1
        elif tag in _BLOCK:
            self.parts.append("\n")

    def handle_endtag(self, tag):
        if tag in ("script", "style", "head"):
            self.skip = max(0, self.skip - 1)
        elif tag in _BLOCK:
            self.parts.append("\n")

    def handle_data(self, data):
        if not self.skip:
            self.parts.append(data)


def html_text(path: Path) -> str:
    """The text of an HTML file."""
    parser = _HtmlText()
    parser.feed(path.read_text(encoding="utf-8", errors="replace"))
    return "".join(parser.parts)


def ascii_only(text: str) -> str:
    """Printable ASCII, newlines and spaces; runs of blank lines folded to one."""
    text = "".join(_ASCII.get(c, c) for c in text)
    text = re.sub(r"[^\x20-\x7e\n]", "", text)
    text = re.sub(r"[ ]+\n", "\n", text)
    return re.sub(r"\n{3,}", "\n\n", text)


def python_docs(limit: int) -> str:
    parts = []
    for folder in ("tutorial", "howto", "faq", "reference", "glossary.rst.txt", "library"):
        for path in (
            sorted((_PYDOCS / folder).rglob("*.txt"))
            if (_PYDOCS / folder).is_dir()
            else [_PYDOCS / folder]
        ):
            parts.append(path.read_text(encoding="utf-8", errors="replace"))
    return "\n\n".join(parts)[:limit]


def _gunzip(path: Path, encoding: str) -> str:
    with gzip.open(path, "rt", encoding=encoding) as handle:
        return handle.read()


def dict_entries(path: Path, limit: int, stride: int = 1) -> str:
    """Entries of a dictd database, without the database header and the source tags."""
    with gzip.open(path, "rt", encoding="utf-8", errors="replace") as handle:
        text = handle.read()
    entries = [e for e in text.split("\n\n") if e.strip() and "00-database" not in e]
    entries = [
        re.sub(r"\s*\[1913 Webster\]|\s*\[PJC\]|\s*\[WordNet [^\]]*\]", "", e)
        for e in entries[::stride]
    ]
    return "\n\n".join(entries)[:limit]


def build_corpus(out: Path) -> dict[str, int]:
    """Write one text file per source into ``out``; returns characters per source."""
    texts = {
        "python-docs": python_docs(2_400_000),
        "devil": dict_entries(Path("/usr/share/dictd/devil.dict.dz"), 10**7),
        "jargon": _gunzip(Path("/usr/share/doc/jargon-text/jargon.txt.gz"), "latin-1"),
        "gcide": dict_entries(Path("/usr/share/dictd/gcide.dict.dz"), 1_200_000, stride=25),
        "gnu-standards": "\n\n".join(
            html_text(p) for p in sorted(Path("/usr/share/doc/gnu-standards").glob("*.html"))
        ),
        "debian-reference": "\n\n".join(
            html_text(p) for p in sorted(Path("/usr/share/debian-reference").glob("*.en.html"))
        ),
    }
    out.mkdir(parents=True, exist_ok=True)
    sizes = {}
    for name, text in texts.items():
        text = ascii_only(text)
        (out / f"{name}.txt").write_text(text, encoding="ascii")
        sizes[name] = len(text)
    return sizes


def pack(run_dir: Path, dest: Path) -> None:
    """Copy a trained run's config, vocabulary and best weights (as float16) into ``dest``."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from textgen.run import pack_run

    pack_run(run_dir, dest)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    corpus = sub.add_parser("corpus", help="assemble the base corpus into a folder")
    corpus.add_argument("out", type=Path)
    packer = sub.add_parser("pack", help="write a trained run into textgen/models/base")
    packer.add_argument("run", type=Path)
    packer.add_argument(
        "--dest", type=Path, default=Path(__file__).resolve().parents[1] / "textgen/models/base"
    )
    args = parser.parse_args()
    if args.command == "corpus":
        sizes = build_corpus(args.out)
        for name, size in sizes.items():
            print(f"{name:18} {size:>10,} characters")
        print(f"{'total':18} {sum(sizes.values()):>10,} characters")
    else:
        pack(args.run, args.dest)


if __name__ == "__main__":
    main()
