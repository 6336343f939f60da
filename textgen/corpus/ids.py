"""Turning a corpus of any size into a compact id array, once.

Files are streamed in chunks (never held as one Python string). A first pass hashes the bytes:
the hash names the cache, so a second run on the same corpus stops there and maps the cached
array. Otherwise a second pass checks that the files are text and counts the characters, and a
third writes the ids, one byte per character when the vocabulary has at most 256 entries.

UTF-8 (and ASCII and Latin-1) chunks are decoded straight from their bytes with numpy and
``bytes.translate``: one byte per character (the character itself when it is ASCII) plus the
positions and code points of the other characters, which are few in most text. Anything this
fast path does not accept (a NUL byte at the start, invalid bytes, another encoding) goes
through the incremental decoder of ``textgen.corpus.reading.decoded_chunks``, which gives the same
characters and raises the errors that name the file and the byte offset.
"""

from __future__ import annotations

import codecs
import hashlib
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from textgen.corpus import reading
from textgen.corpus.reading import corpus_files, decoded_chunks
from textgen.errors import CorpusError, TextgenError, VocabularyError
from textgen.files import atomic_write, write_text
from textgen.tokenizer import Tokenizer

_FORMAT = 1  # bump when the cached layout changes
_HASH_BYTES = 1 << 22
_COUNT_BLOCK = 1 << 16  # bytes per np.bincount call
_DENSE = 20  # decode UTF-8 with Python when more than 1 byte in this many is not ASCII
_NO_POSITIONS = np.zeros(0, dtype=np.intp)
_NO_POINTS = np.zeros(0, dtype=np.uint32)
_CONTINUATION = bytes(range(0x80, 0xC0))  # the bytes that go on a UTF-8 sequence
_MIN_POINT = np.array([0, 0, 0x80, 0x800, 0x10000], dtype=np.uint32)  # by UTF-8 length
_LEAD_MASK = np.array([0, 0, 0x1F, 0x0F, 0x07], dtype=np.uint32)


def compact_ids(ids: np.ndarray, vocab_size: int) -> np.ndarray:
    """Store ids in the smallest unsigned type that holds the vocabulary."""
    dtype = np.uint8 if vocab_size <= 256 else np.uint16 if vocab_size <= 65536 else np.uint32
    return ids.astype(dtype, copy=False)


@dataclass
class PreparedCorpus:
    """A corpus as ids: ``ids`` may be a read-only memory map of the cache file."""

    tokenizer: Tokenizer
    ids: np.ndarray
    sha256: str
    files: list[Path]


class _Piece:
    """The characters of one chunk of text, in one of two forms.

    Mostly ASCII: ``raw`` less its ``drop`` bytes has one byte per character, the code point of
    an ASCII character and a byte >= 0x80 for any other; ``where`` lists the positions of the
    others and ``wide`` their code points. For UTF-8, ``raw`` is the chunk itself and ``drop``
    the continuation bytes, so ``bytes.translate`` maps and decodes in a single pass.

    Dense (``raw`` is None): ``wide`` has the code point of every character.
    """

    __slots__ = ("raw", "size", "where", "wide", "drop")

    def __init__(
        self,
        raw: bytes | None,
        where: np.ndarray = _NO_POSITIONS,
        wide: np.ndarray = _NO_POINTS,
        *,
        size: int | None = None,
        drop: bytes = b"",
    ) -> None:
        self.raw = raw
        self.where = where
        self.wide = wide
        self.drop = drop
        if size is None:
            size = len(wide) if raw is None else len(raw)
        self.size = size

    @classmethod
    def dense(cls, points: np.ndarray) -> _Piece:
        return cls(None, wide=points)

    def __len__(self) -> int:
        return self.size

    def counts(self) -> np.ndarray:
        """How often each character occurs (index = code point)."""
        if self.raw is None:
            return _bincount(self.wide, 1 << 20)
        counts = _bincount(np.frombuffer(self.raw, dtype=np.uint8), _COUNT_BLOCK)[:128]
        if len(self.wide):
            counts = _add(np.bincount(self.wide), counts)
        return counts

    def chars(self, table: bytes | None = None) -> np.ndarray:
        """One uint8 per character, mapped through ``table`` (a 256-byte translation)."""
        if self.drop or table is not None:
            return np.frombuffer(self.raw.translate(table, self.drop), dtype=np.uint8)
        return np.frombuffer(self.raw, dtype=np.uint8)


def _bincount(values: np.ndarray, block: int) -> np.ndarray:
    """``np.bincount`` by blocks, so that its int64 copy of the input stays small."""
    counts = np.zeros(256, dtype=np.int64)
    for i in range(0, len(values), block):
        counts = _add(counts, np.bincount(values[i : i + block]))
    return counts


def _add(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a + b`` for count arrays of any lengths (reuses the longer one)."""
    if len(a) < len(b):
        a, b = b, a
    a[: len(b)] += b
    return a


_Decoder = Callable[[bytes, bool], "tuple[_Piece, bytes] | None"]


def _check_encoding(encoding: str, errors: str) -> None:
    try:
        codecs.lookup(encoding)
    except LookupError:
        raise CorpusError(f"unknown encoding {encoding!r}") from None
    if errors not in ("strict", "replace"):
        raise TextgenError("errors must be 'strict' or 'replace'")


def _codepoints(piece: str) -> np.ndarray:
    return np.frombuffer(piece.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)


def _text_piece(text: str) -> _Piece:
    return _Piece(text.encode("ascii")) if text.isascii() else _Piece.dense(_codepoints(text))


def _utf8(chunk: bytes, at_end: bool) -> tuple[_Piece, bytes] | None:
    """Decode ``chunk``; returns the piece and the bytes of a character cut at its end.

    Returns None unless every byte is valid UTF-8 (as strict as Python's decoder).
    """
    if chunk.isascii():
        return _Piece(chunk), b""
    raw = np.frombuffer(chunk, dtype=np.uint8)
    beyond = raw >= 0x80
    if np.count_nonzero(beyond) > len(raw) // _DENSE:  # Python's decoder is faster here
        try:
            text, used = codecs.utf_8_decode(chunk, "strict", at_end)
        except UnicodeDecodeError:
            return None
        return _Piece.dense(_codepoints(text)), chunk[used:]
    high = np.flatnonzero(beyond)
    top = raw[high]
    is_lead = top >= 0xC0
    starts, first = high[is_lead], top[is_lead]
    size = 2 + (first >= 0xE0).astype(np.intp) + (first >= 0xF0)
    end = len(raw)
    if len(starts) and starts[-1] + size[-1] > end:  # the last character goes on in the next chunk
        if at_end:
            return None
        end = int(starts[-1])
        starts, first, size = starts[:-1], first[:-1], size[:-1]
        kept = np.searchsorted(high, end)
        high, is_lead = high[:kept], is_lead[:kept]
    following = high[~is_lead]
    # a character's position among the characters: its byte offset less the continuation
    # bytes before it
    where = starts - (np.flatnonzero(is_lead) - np.arange(len(starts)))
    if len(following) != int(size.sum()) - len(size):  # stray or missing continuation bytes
        return None
    points = first.astype(np.uint32) & _LEAD_MASK[size]
    for k in (1, 2, 3):
        longer = size > k
        byte = raw[starts[longer] + k]
        if ((byte & 0xC0) != 0x80).any():
            return None
        points[longer] = (points[longer] << 6) | (byte & 0x3F)
    if (
        (first > 0xF4).any()
        or (points < _MIN_POINT[size]).any()  # overlong forms
        or (points > 0x10FFFF).any()
        or ((points >= 0xD800) & (points <= 0xDFFF)).any()  # surrogates
    ):
        return None
    piece = _Piece(chunk[:end], where, points, size=end - len(following), drop=_CONTINUATION)
    return piece, chunk[end:]


def _ascii(chunk: bytes, at_end: bool) -> tuple[_Piece, bytes] | None:
    return (_Piece(chunk), b"") if chunk.isascii() else None


def _latin1(chunk: bytes, at_end: bool) -> tuple[_Piece, bytes] | None:
    if chunk.isascii():
        return _Piece(chunk), b""
    return _Piece.dense(np.frombuffer(chunk, dtype=np.uint8)), b""


_FAST: dict[str, tuple[_Decoder, bool]] = {  # codec name: (decoder, look for NUL bytes)
    "utf-8": (_utf8, True),
    "ascii": (_ascii, True),
    "iso8859-1": (_latin1, False),
}


def _fast_pieces(path: Path, decode: _Decoder, probe: bool) -> Iterator[_Piece | None]:
    """The pieces of one file; a final None means "give up, use the decoder from here"."""
    try:
        handle = path.open("rb")
    except OSError:
        yield None
        return
    with handle:
        raw = handle.read(reading.CHUNK_BYTES)
        if probe and b"\x00" in raw[: reading.NUL_PROBE]:
            yield None
            return
        carry = b""
        while True:
            at_end = not raw
            result = decode(carry + raw if carry else raw, at_end)
            if result is None:
                yield None
                return
            piece, carry = result
            if len(piece):
                yield piece
            if at_end:
                return
            raw = handle.read(reading.CHUNK_BYTES)


def _file_pieces(path: Path, encoding: str, errors: str) -> Iterator[_Piece]:
    fast = _FAST.get(codecs.lookup(encoding).name)
    done = 0
    if fast is not None:
        for piece in _fast_pieces(path, *fast):
            if piece is None:
                break
            done += len(piece)
            yield piece
        else:
            return
    # The decoder starts from the beginning (so its errors name the right offset) and skips
    # the characters already given.
    for text in decoded_chunks([path], encoding, errors):
        if done >= len(text):
            done -= len(text)
            continue
        yield _text_piece(text[done:])
        done = 0


def _pieces(files: list[Path], encoding: str, errors: str) -> Iterator[_Piece]:
    """The characters of the corpus in pieces, files separated as documents."""
    for n, path in enumerate(files):
        if n:
            yield _text_piece(reading.DOCUMENT_SEPARATOR)
        yield from _file_pieces(path, encoding, errors)


def _hash_files(files: list[Path], key: dict) -> str:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode())
    buffer = memoryview(bytearray(0))
    for path in files:
        digest.update(b"\0file\0")
        try:
            handle = path.open("rb", buffering=0)
        except OSError as err:
            raise CorpusError(f"cannot read {path}: {err.strerror}") from None
        with handle:
            wanted = min(_HASH_BYTES, os.fstat(handle.fileno()).st_size + 1)
            if len(buffer) < wanted:  # no bigger than the files need
                buffer = memoryview(bytearray(wanted))
            while n := handle.readinto(buffer):
                digest.update(buffer[:n])
    return digest.hexdigest()


def _count(files: list[Path], encoding: str, errors: str) -> np.ndarray:
    """Count every character of the corpus (index = code point)."""
    counts = np.zeros(256, dtype=np.int64)
    for piece in _pieces(files, encoding, errors):
        counts = _add(counts, piece.counts())
    return counts


def _check_not_empty(counts: np.ndarray, spec) -> None:
    present = np.nonzero(counts)[0]
    if len(present) == 0 or all(chr(p).isspace() for p in present):
        raise CorpusError(f"{spec} is empty (or only whitespace); there is nothing to learn")
    if len(present) < 2:
        raise CorpusError(f"{spec} has only one distinct character; there is nothing to learn")


def _check_vocabulary(counts: np.ndarray, tokenizer: Tokenizer) -> None:
    """Raise VocabularyError if the corpus has characters a tokenizer without unknown lacks."""
    if tokenizer.unknown:
        return
    present = np.nonzero(counts)[0]
    points = np.array([ord(c) for c in tokenizer.chars], dtype=np.int64)
    missing = present[~np.isin(present, points)]
    if len(missing):
        shown = ", ".join(repr(chr(c)) for c in missing[:10])
        raise VocabularyError(f"the corpus has characters the vocabulary lacks: {shown}")


def _ids(files, encoding, errors, tokenizer: Tokenizer, counts: np.ndarray) -> Iterator[np.ndarray]:
    """The ids of the corpus in pieces, in the compact dtype; ``counts`` come from ``_count``."""
    points = np.array([ord(c) for c in tokenizer.chars], dtype=np.int64)
    dtype = compact_ids(np.zeros(0, np.int64), tokenizer.vocab_size).dtype
    fill = tokenizer.unknown_id or 0  # every character was checked against the vocabulary
    table = np.full(max(len(counts), 256), fill, dtype=dtype)  # code point -> id
    inside = points < len(table)
    table[points[inside]] = np.flatnonzero(inside)
    byte_table = table[:256].tobytes() if dtype == np.uint8 else None
    total = 0
    for piece in _pieces(files, encoding, errors):
        if piece.raw is None:
            ids = np.take(table, piece.wide, mode="clip")
        elif byte_table is not None:  # ids straight from bytes.translate
            ids = piece.chars(byte_table)
        else:
            ids = np.take(table, piece.chars())
        if len(piece.where):  # the bytes there were placeholders
            ids = ids if ids.flags.writeable else ids.copy()
            ids[piece.where] = np.take(table, piece.wide, mode="clip")
        total += len(ids)
        yield ids
    if total != int(counts.sum()):
        raise CorpusError("the corpus changed while it was being prepared; try again")


def _write_ids(pieces: Iterator[np.ndarray], dest: Path) -> int:
    """Stream ``pieces`` into ``dest`` (atomically); returns the number of ids."""
    total = 0

    def write(handle) -> None:
        nonlocal total
        for ids in pieces:
            handle.write(memoryview(ids))
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
    base: Tokenizer | None = None,
) -> PreparedCorpus:
    """Read a file, folder or glob into ids, using ``cache_dir`` when given.

    Args:
        spec: the corpus (see ``textgen.corpus.reading.corpus_files``).
        cache_dir: where ids are cached as ``<sha256>.ids`` with a ``.json`` beside them.
        encoding, errors: how the bytes are decoded ("strict" errors name the byte offset).
        max_vocab: keep only this many most frequent characters (others get the unknown id).
        tokenizer: encode with this vocabulary (a resumed run) instead of building one.
        base: extend this vocabulary with the corpus's new characters (``Tokenizer.extended``;
            fine-tuning) instead of building one.
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
    if base is not None:
        key["base"] = base.to_json()
    digest = _hash_files(files, key)
    if cache_dir is not None:
        cached = _load_cached(Path(cache_dir), digest)
        if cached is not None:
            return PreparedCorpus(cached[0], cached[1], digest, files)
    counts = _count(files, encoding, errors)
    _check_not_empty(counts, spec)
    if base is not None:
        tokenizer = base.extended(counts, max_vocab=max_vocab)
    elif tokenizer is None:
        tokenizer = Tokenizer.from_counts(counts, max_vocab=max_vocab)
    else:
        _check_vocabulary(counts, tokenizer)
    pieces = _ids(files, encoding, errors, tokenizer, counts)
    if cache_dir is None:
        dtype = compact_ids(np.zeros(0, np.int64), tokenizer.vocab_size).dtype
        ids = np.concatenate([np.zeros(0, dtype), *pieces])
        return PreparedCorpus(tokenizer, ids, digest, files)
    cache_dir = Path(cache_dir)
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise CorpusError(f"cannot create the corpus cache {cache_dir}: {err.strerror}") from None
    n = _write_ids(pieces, cache_dir / f"{digest}.ids")
    meta = {"tokenizer": tokenizer.to_json(), "length": n}
    write_text(cache_dir / f"{digest}.json", json.dumps(meta))
    return PreparedCorpus(tokenizer, _load_cached(cache_dir, digest)[1], digest, files)


def _load_cached(cache_dir: Path, digest: str) -> tuple[Tokenizer, np.ndarray] | None:
    meta_path, ids_path = cache_dir / f"{digest}.json", cache_dir / f"{digest}.ids"
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        saved = meta["tokenizer"]
        tokenizer = Tokenizer.from_json(saved)
        dtype = compact_ids(np.zeros(0, np.int64), tokenizer.vocab_size).dtype
        if ids_path.stat().st_size != meta["length"] * dtype.itemsize:
            return None
        if meta["length"] == 0:
            return tokenizer, np.zeros(0, dtype)
        return tokenizer, np.memmap(ids_path, dtype=dtype, mode="r")
    except (OSError, ValueError, KeyError, TypeError, TextgenError):
        return None  # absent or damaged: rebuild it
