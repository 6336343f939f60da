"""The corpus front door: whatever a user names as a corpus, as text or as ids.

A corpus is a text file, a folder (every file below it), a glob, or a name: a built-in
(``pydocs``, ``pysource``), a catalogue download or a ``NAME.txt`` in the corpus directory. The
library and the command line accept the same things, through these functions:

- ``resolve``: a spec -> something ``reading`` can open (fetching a named corpus if needed);
- ``load_corpus``: a spec -> a ``PreparedCorpus`` (vocabulary and compact, cached id array);
- ``read_text``: a spec -> one string, for small texts such as ``textgen eval``'s;
- ``corpus_info``: a spec -> its size, encoding and character counts (``textgen corpus info``).

``textgen corpus list|get`` use ``list_corpora``, ``get_corpus`` and ``corpus_dir``, and
``textgen inspect`` reads its text with ``decoded_chunks``, all through this front.

The parts: ``catalogue`` (names, built-ins, downloads), ``reading`` (files, folders, globs,
encodings) and ``ids`` (the id array and its cache).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from textgen.config import DEFAULT_CORPUS
from textgen.corpus.catalogue import (
    corpus_dir,
    files_info,
    get_corpus,
    list_corpora,
    resolve_corpus,
)
from textgen.corpus.ids import PreparedCorpus, prepare_corpus
from textgen.corpus.reading import corpus_files, decoded_chunks, read_corpus

__all__ = [
    "DEFAULT_CORPUS",
    "PreparedCorpus",
    "check_exists",
    "corpus_dir",
    "corpus_info",
    "decoded_chunks",
    "get_corpus",
    "list_corpora",
    "load_corpus",
    "read_text",
    "resolve",
]


def resolve(spec: str | os.PathLike, *, download: bool = True, progress: bool = True) -> str:
    """An existing path or a glob as given; a corpus name as the path of its text file.

    ``download=False`` refuses a catalogue corpus not downloaded yet instead of fetching it.
    """
    spec = os.fspath(spec)
    if Path(spec).exists() or any(ch in spec for ch in "*?["):
        return spec
    return str(resolve_corpus(spec, download=download, progress=progress))


def load_corpus(spec: str | os.PathLike, **options) -> PreparedCorpus:
    """A corpus's vocabulary and ids; ``options`` as ``textgen.corpus.ids.prepare_corpus``."""
    return prepare_corpus(resolve(spec), **options)


def read_text(spec: str | os.PathLike, *, encoding: str = "utf-8", errors: str = "strict") -> str:
    """A small corpus as one string, checked to be text."""
    return read_corpus(resolve(spec), encoding=encoding, errors=errors)


def check_exists(spec: str | os.PathLike) -> None:
    """Raise CorpusError now, before a run directory is made, if ``spec`` names nothing."""
    corpus_files(resolve(spec))


def corpus_info(spec: str | os.PathLike, *, top: int = 10) -> dict[str, Any]:
    """Size, encoding and character counts of a corpus, as ``catalogue.files_info`` gives them.

    Accepts what training accepts (a file, folder, glob or name), but downloads nothing.
    """
    resolved = resolve(spec, download=False, progress=False)
    return files_info(corpus_files(resolved), top=top, path=resolved)
