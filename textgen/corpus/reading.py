"""Reading a corpus's text: a file, a folder (recursively) or a glob, in any encoding.

Files of a folder or glob are read in sorted path order, joined as documents with a blank line
between them. Text is decoded in chunks, so no reader here needs the whole corpus in memory
(``read_corpus`` alone returns one string, for small texts).
"""

from __future__ import annotations

import codecs
import glob
import os
from collections.abc import Iterator
from pathlib import Path

from textgen.errors import CorpusError

DOCUMENT_SEPARATOR = "\n\n"
CHUNK_BYTES = 8 << 20
NUL_PROBE = 8192


def corpus_files(spec: str | os.PathLike) -> list[Path]:
    """Expand a file, a folder (recursively) or a glob into a sorted list of files."""
    path = Path(spec)
    if path.is_file():
        return [path]
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
        if not files:
            raise CorpusError(f"{path} is a folder with no files in it")
        return files
    if any(ch in str(spec) for ch in "*?["):
        files = sorted(Path(p) for p in glob.glob(str(spec), recursive=True) if Path(p).is_file())
        if not files:
            raise CorpusError(f"no files match {spec}")
        return files
    if path.exists():
        raise CorpusError(f"{path} is not a regular file")
    raise CorpusError(f"no such file: {path}")


def decoded_chunks(files: list[Path], encoding: str, errors: str) -> Iterator[str]:
    """Yield the text of ``files`` in pieces (never all at once), separated as documents."""
    text_like = codecs.lookup(encoding).name in ("utf-8", "ascii")
    for n, path in enumerate(files):
        if n:
            yield DOCUMENT_SEPARATOR
        decoder = codecs.getincrementaldecoder(encoding)(errors)
        offset = 0
        try:
            handle = path.open("rb")
        except OSError as err:
            raise CorpusError(f"cannot read {path}: {err.strerror}") from None
        with handle:
            while True:
                raw = handle.read(CHUNK_BYTES)
                if offset == 0 and text_like and b"\x00" in raw[:NUL_PROBE]:
                    raise CorpusError(
                        f"{path} looks like a binary file (it contains NUL bytes), not text"
                    )
                pending = len(decoder.getstate()[0])  # bytes held over from the last chunk
                try:
                    piece = decoder.decode(raw, final=not raw)
                except UnicodeDecodeError as err:
                    raise CorpusError(
                        f"{path} is not valid {encoding}: bad byte at offset "
                        f"{offset - pending + err.start}; give the right --encoding, "
                        "or --errors replace"
                    ) from None
                offset += len(raw)
                if piece:
                    yield piece
                if not raw:
                    break


def read_corpus(spec: str | os.PathLike, *, encoding: str = "utf-8", errors: str = "strict") -> str:
    """Read a small corpus (file, folder or glob) as one string, checking that it is text.

    Files of a folder or glob are joined in sorted path order with a blank line between them.
    Large corpora go through ``textgen.corpus.ids``, which never holds the whole text.
    """
    try:
        codecs.lookup(encoding)
    except LookupError:
        raise CorpusError(f"unknown encoding {encoding!r}") from None
    text = "".join(decoded_chunks(corpus_files(spec), encoding, errors))
    if not text.strip():
        raise CorpusError(f"{spec} is empty (or only whitespace); there is nothing to learn")
    if len(set(text)) < 2:
        raise CorpusError(f"{spec} has only one distinct character; there is nothing to learn")
    return text
