"""Turning a corpus of any size into a compact id array, once.

Files are streamed in chunks (never held as one Python string): a first pass checks that they
are text, counts the characters and hashes the bytes; a second pass writes the ids, one byte per
character when the vocabulary has at most 256 entries. The result is cached under the content
hash, so a second run on the same corpus only re-hashes the bytes and maps the cached array.
"""

from __future__ import annotations

import codecs
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from textgen.checkpoint import atomic_write, write_text
from textgen.data import compact_ids, corpus_files, decoded_chunks
from textgen.errors import CorpusError, TextgenError, VocabularyError
from textgen.tokenizer import Tokenizer

_FORMAT = 1  # bump when the cached layout changes


@dataclass
class PreparedCorpus:
    """A corpus as ids: ``ids`` may be a read-only memory map of the cache file."""

    tokenizer: Tokenizer
    ids: np.ndarray
    sha256: str
    files: list[Path]


def _check_encoding(encoding: str, errors: str) -> None:
    try:
        codecs.lookup(encoding)
    except LookupError:
        raise CorpusError(f"unknown encoding {encoding!r}") from None
    if errors not in ("strict", "replace"):
        raise TextgenError("errors must be 'strict' or 'replace'")


def _codepoints(piece: str) -> np.ndarray:
    return np.frombuffer(piece.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)


def _hash_files(files: list[Path], key: dict) -> str:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode())
    for path in files:
        digest.update(b"\0file\0")
        with path.open("rb") as handle:
            while chunk := handle.read(1 << 22):
                digest.update(chunk)
    return digest.hexdigest()


def _count(files: list[Path], encoding: str, errors: str) -> np.ndarray:
    """Count every code point of the corpus (index = code point)."""
    counts = np.zeros(0, dtype=np.int64)
    for piece in decoded_chunks(files, encoding, errors):
        c = np.bincount(_codepoints(piece))
        if len(c) > len(counts):
            c[: len(counts)] += counts
            counts = c
        else:
            counts[: len(c)] += c
    return counts


def _tokenizer_from_counts(counts: np.ndarray, max_vocab: int | None, spec) -> Tokenizer:
    present = np.nonzero(counts)[0]
    if len(present) == 0 or all(chr(p).isspace() for p in present):
        raise CorpusError(f"{spec} is empty (or only whitespace); there is nothing to learn")
    if len(present) < 2:
        raise CorpusError(f"{spec} has only one distinct character; there is nothing to learn")
    if max_vocab is not None and len(present) > max_vocab:
        order = np.lexsort((present, -counts[present]))[:max_vocab]
        return Tokenizer([chr(p) for p in present[order]], unknown=True)
    return Tokenizer([chr(p) for p in present])


def _write_ids(files, encoding, errors, tokenizer: Tokenizer, dest: Path) -> int:
    """Stream the ids of the corpus into ``dest`` (atomically); returns their number."""
    points = np.array([ord(c) for c in tokenizer.chars], dtype=np.int64)
    table = np.full(int(points.max()) + 1, -1, dtype=np.int64)
    table[points] = np.arange(len(points))
    unknown = tokenizer.unknown_id
    total = 0

    def write(handle) -> None:
        nonlocal total
        for piece in decoded_chunks(files, encoding, errors):
            cps = _codepoints(piece).astype(np.int64)
            ids = np.full(len(cps), -1, dtype=np.int64)
            inside = cps < len(table)
            ids[inside] = table[cps[inside]]
            missing = ids < 0
            if missing.any():
                if unknown is None:
                    chars = sorted({chr(c) for c in np.unique(cps[missing])})
                    shown = ", ".join(repr(c) for c in chars[:10])
                    raise VocabularyError(
                        f"the corpus has characters the vocabulary lacks: {shown}"
                    )
                ids[missing] = unknown
            handle.write(compact_ids(ids, tokenizer.vocab_size).tobytes())
            total += len(ids)

    atomic_write(dest, write)
    return total


def prepare_corpus(
    spec: str | os.PathLike,
    *,
    cache_dir: Path | None = None,
    encoding: str = "utf-8",
    errors: str = "strict",
    max_vocab: int | None = None,
    tokenizer: Tokenizer | None = None,
) -> PreparedCorpus:
    """Read a file, folder or glob into ids, using ``cache_dir`` when given.

    Args:
        spec: the corpus (see ``textgen.data.corpus_files``).
        cache_dir: where ids are cached as ``<sha256>.ids`` with a ``.json`` beside them.
        encoding, errors: how the bytes are decoded ("strict" errors name the byte offset).
        max_vocab: keep only this many most frequent characters (others get the unknown id).
        tokenizer: encode with this vocabulary (a resumed run) instead of building one.
    """
    _check_encoding(encoding, errors)
    files = corpus_files(spec)
    key = {
        "format": _FORMAT,
        "encoding": codecs.lookup(encoding).name,
        "errors": errors,
        "max_vocab": max_vocab,
        "vocabulary": tokenizer.to_json() if tokenizer else None,
    }
    digest = _hash_files(files, key)
    if cache_dir is not None:
        cached = _load_cached(Path(cache_dir), digest)
        if cached is not None:
            return PreparedCorpus(cached[0], cached[1], digest, files)
    counts = _count(files, encoding, errors)
    if tokenizer is None:
        tokenizer = _tokenizer_from_counts(counts, max_vocab, spec)
    else:
        _tokenizer_from_counts(counts, None, spec)  # the same emptiness checks
    if cache_dir is None:
        text = "".join(decoded_chunks(files, encoding, errors))
        ids = compact_ids(tokenizer.encode(text), tokenizer.vocab_size)
        return PreparedCorpus(tokenizer, ids, digest, files)
    cache_dir = Path(cache_dir)
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise CorpusError(f"cannot create the corpus cache {cache_dir}: {err.strerror}") from None
    n = _write_ids(files, encoding, errors, tokenizer, cache_dir / f"{digest}.ids")
    meta = {"tokenizer": tokenizer.to_json(), "length": n}
    write_text(cache_dir / f"{digest}.json", json.dumps(meta))
    return PreparedCorpus(tokenizer, _load_cached(cache_dir, digest)[1], digest, files)


def _load_cached(cache_dir: Path, digest: str) -> tuple[Tokenizer, np.ndarray] | None:
    meta_path, ids_path = cache_dir / f"{digest}.json", cache_dir / f"{digest}.ids"
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        data = meta["tokenizer"]
        tokenizer = Tokenizer(list(data["chars"]), unknown=bool(data["unknown"]))
        dtype = compact_ids(np.zeros(0, np.int64), tokenizer.vocab_size).dtype
        if ids_path.stat().st_size != meta["length"] * dtype.itemsize:
            return None
        if meta["length"] == 0:
            return tokenizer, np.zeros(0, dtype)
        return tokenizer, np.memmap(ids_path, dtype=dtype, mode="r")
    except (OSError, ValueError, KeyError, TypeError, TextgenError):
        return None  # absent or damaged: rebuild it
