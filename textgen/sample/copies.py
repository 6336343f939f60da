"""What a sample copies: the longest span of it that appears verbatim in the training corpus.

A character model trained too long on a small text learns to recite it. To tell a user when a
sample is recited rather than written, the corpus's ids get a suffix array (built once by
``pydivsufsort`` and cached as ``<sha256>.sa`` beside the corpus's ``<sha256>.ids``, then
memory-mapped), and a text is checked against it by binary search:

- the longest copy starting at position ``i`` of the text is the longest common prefix of the
  text from ``i`` with its neighbours in the sorted suffixes;
- positions are visited left to right, and position ``i`` is searched in full only if its next
  ``best + 1`` characters occur at all (one binary search), so a 500-character sample takes a
  few hundred searches of about 27 steps each against a 100 MB corpus.

Memory: the index is 4 bytes per corpus character (int32; a corpus of 2**31 characters or more
takes int64), and building it holds one writable copy of the ids beside it.
"""

from __future__ import annotations

import contextlib
import os
import sys
from bisect import bisect_left
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from textgen.errors import TextgenError
from textgen.files import atomic_write

MAX_COPY_TRIES = 20  # draws of one sample before ``--max-copy`` gives up on it
_SUFFIX = ".sa"
_WINDOWS = (8, 32)  # ids compared per position in the vectorised searches


class CorpusUnavailable(TextgenError):
    """The run's corpus cannot be found, or is no longer the text the run was trained on."""


class CopyIndex:
    """A corpus's ids and their suffix array: ``longest_copy`` of any id sequence."""

    def __init__(self, ids: np.ndarray, suffixes: np.ndarray) -> None:
        if len(ids) != len(suffixes):
            raise TextgenError("the copy index does not belong to these ids")
        self.ids = ids
        self.suffixes = suffixes
        # Byte strings of big-endian ids sort as the ids do, so slices compare with ``<``.
        self._big = ids.dtype.newbyteorder(">")
        self._width = ids.dtype.itemsize

    @classmethod
    def build(cls, ids: np.ndarray) -> CopyIndex:
        """Sort the suffixes of ``ids`` (unsigned integers) with divsufsort."""
        from pydivsufsort import divsufsort

        ids = np.asarray(ids)
        if len(ids) == 0:
            return cls(ids, np.zeros(0, np.int32))
        return cls(ids, divsufsort(np.array(ids)))  # divsufsort needs a writable copy

    @classmethod
    def cached(cls, ids: np.ndarray, cache_dir: Path, digest: str) -> CopyIndex:
        """The index of ``ids`` from ``cache_dir/<digest>.sa``, built and written if absent."""
        path = Path(cache_dir) / f"{digest}{_SUFFIX}"
        dtype = np.int32 if len(ids) < 2**31 else np.int64
        try:
            if path.stat().st_size == len(ids) * np.dtype(dtype).itemsize and len(ids):
                return cls(ids, np.memmap(path, dtype=dtype, mode="r"))
        except OSError:
            pass  # absent: build it
        index = cls.build(ids)
        suffixes = index.suffixes.astype(dtype, copy=False)
        # A cache that cannot be written costs time, not correctness.
        with contextlib.suppress(TextgenError):
            atomic_write(path, lambda handle: handle.write(memoryview(suffixes)))
        return index

    def _prefix(self, length: int) -> Callable[[int], bytes]:
        """The first ``length`` ids of the suffix at a position, as comparable bytes."""
        ids, big = self.ids, self._big

        def prefix(position) -> bytes:
            position = int(position)
            return ids[position : position + length].astype(big).tobytes()

        return prefix

    def _occurs(self, pattern: bytes) -> bool:
        key = self._prefix(len(pattern) // self._width)
        found = bisect_left(self.suffixes, pattern, key=key)
        return found < len(self.suffixes) and key(self.suffixes[found]) == pattern

    def _longest_at(self, rest: bytes) -> int:
        """The longest prefix of ``rest`` that occurs in the corpus, in ids."""
        key = self._prefix(len(rest) // self._width)
        found = bisect_left(self.suffixes, rest, key=key)
        best = 0
        for neighbour in (found - 1, found):
            if 0 <= neighbour < len(self.suffixes):
                best = max(best, _common_prefix(rest, key(self.suffixes[neighbour])))
        return best // self._width

    def longest_copy(self, ids: np.ndarray) -> int:
        """The length of the longest run of ``ids`` that appears in the corpus.

        Ids below 0 (characters the vocabulary lacks) never match.
        """
        ids = np.asarray(ids, dtype=np.int64)
        if len(ids) == 0 or len(self.suffixes) == 0:
            return 0
        best = 0
        for piece in np.split(ids, np.flatnonzero(ids < 0)):
            piece = piece[piece >= 0]
            if len(piece) <= best:
                continue
            # Every position's match, capped at a window, in one vectorised search: first with a
            # short window, then a longer one for the positions that reached it; only the
            # positions that reach the last window can match further, and they are few.
            capped = np.zeros(len(piece), np.int64)
            starts = np.arange(len(piece))
            for window in _WINDOWS:
                capped[starts] = self._matches(piece, starts, window)
                starts = starts[capped[starts] == window]
            best = max(best, int(capped.max()))
            text = piece.astype(self._big).tobytes()
            w = self._width
            for start in starts.tolist():
                if len(piece) - start <= best:
                    break
                if self._occurs(text[start * w : (start + best + 1) * w]):
                    best = max(best, self._longest_at(text[start * w :]))
        return best

    def _matches(self, piece: np.ndarray, starts: np.ndarray, window: int) -> np.ndarray:
        """For each of the ``starts`` of ``piece``, its longest match in the corpus, at most
        ``window``.

        A binary search for all positions at once over the suffixes' first ``window`` ids
        (-1 past the end of the corpus or of ``piece``, which sorts an ended text first, as
        the suffix array does); the longest match is with a neighbour of the insertion point.
        """
        n, size = len(starts), len(self.suffixes)
        offsets = np.arange(window)
        at = starts[:, None] + offsets
        pattern = np.where(at < len(piece), piece[np.minimum(at, len(piece) - 1)], -1)
        lo, hi = np.zeros(n, np.int64), np.full(n, size, np.int64)
        while (active := lo < hi).any():
            mid = (lo + hi) // 2
            keys = self._windows(np.where(active, mid, 0), offsets)
            differ = keys != pattern
            first = differ.argmax(axis=1)
            rows = np.arange(n)
            below = differ.any(axis=1) & (keys[rows, first] < pattern[rows, first])
            lo = np.where(active & below, mid + 1, lo)
            hi = np.where(active & ~below, mid, hi)
        longest = np.zeros(n, np.int64)
        real = np.minimum(window, len(piece) - starts)  # ids of piece in each window
        for neighbour in (lo - 1, lo):
            valid = (neighbour >= 0) & (neighbour < size)
            keys = self._windows(np.clip(neighbour, 0, size - 1), offsets)
            same = (keys == pattern) & (offsets < real[:, None])
            common = np.where(same.all(axis=1), window, (~same).argmax(axis=1))
            longest = np.maximum(longest, np.where(valid, np.minimum(common, real), 0))
        return longest

    def _windows(self, ranks: np.ndarray, offsets: np.ndarray) -> np.ndarray:
        """The first ``len(offsets)`` ids of the suffixes of these ranks, -1 past the end."""
        at = np.asarray(self.suffixes[ranks], dtype=np.int64)[:, None] + offsets
        inside = at < len(self.ids)
        found = self.ids[np.where(inside, at, 0)].astype(np.int64)
        return np.where(inside, found, -1)


def _common_prefix(a: bytes, b: bytes) -> int:
    n = min(len(a), len(b))
    if a[:n] == b[:n]:
        return n
    left, right = np.frombuffer(a[:n], np.uint8), np.frombuffer(b[:n], np.uint8)
    return int(np.flatnonzero(left != right)[0])


@dataclass
class CopyChecker:
    """A run's corpus index with its vocabulary: ``longest_copy(text)`` in characters."""

    index: CopyIndex
    chars: dict[str, int]

    def longest_copy(self, text: str) -> int:
        """The longest span of ``text`` found verbatim in the corpus the run was trained on."""
        return self.index.longest_copy(np.array([self.chars.get(c, -1) for c in text], np.int64))


def copy_checker(run_dir: str | os.PathLike) -> CopyChecker:
    """The copy checker of a run's training corpus.

    Raises:
        CorpusUnavailable: the corpus the run records can no longer be found, or its content
            (and so its hash) differs from what the run was trained on.
    """
    from textgen import run as rundir
    from textgen.corpus import check_exists, load_corpus
    from textgen.tokenizer import Tokenizer

    run_dir = rundir.resolve_run(run_dir)
    config = rundir.read_config(run_dir)
    tokenizer = Tokenizer.load(run_dir / rundir.TOKENIZER)
    source, recorded = config.corpus.get("source"), config.corpus.get("sha256")
    if not source or not recorded:
        raise CorpusUnavailable(f"{run_dir} does not record the corpus it was trained on")
    try:
        check_exists(source)
    except TextgenError:
        raise CorpusUnavailable(f"the corpus {source} can no longer be found") from None
    training = config.training
    base = (config.init_from or {}).get("tokenizer")
    cache_dir = run_dir.parent / rundir.CACHE_DIR
    try:
        # As training prepared it, so the hashes compare and the id cache is reused.
        prepared = load_corpus(
            source,
            cache_dir=None if rundir.is_shipped(run_dir) else cache_dir,
            encoding=training.encoding,
            errors=training.errors,
            max_vocab=training.max_vocab,
            base=Tokenizer.from_json(base) if base else None,
        )
    except TextgenError as err:
        raise CorpusUnavailable(f"the corpus {source} cannot be read ({err})") from None
    if prepared.sha256 != recorded or prepared.tokenizer != tokenizer:
        raise CorpusUnavailable(f"the corpus {source} has changed since the run was trained")
    if rundir.is_shipped(run_dir):
        index = CopyIndex.build(prepared.ids)
    else:
        index = CopyIndex.cached(prepared.ids, cache_dir, prepared.sha256)
    return CopyChecker(index, {c: i for i, c in enumerate(tokenizer.chars)})


def copy_checker_or_warn(run_dir: str | os.PathLike) -> CopyChecker | None:
    """``copy_checker``, or None after a one-line warning on stderr when it is unavailable."""
    try:
        return copy_checker(run_dir)
    except CorpusUnavailable as err:
        print(f"textgen: warning: cannot report copies: {err}", file=sys.stderr)
        return None


def sample_within(
    sampler,
    checker: CopyChecker,
    num_samples: int,
    length: int,
    options,
    max_copy: int,
    *,
    tries: int = MAX_COPY_TRIES,
) -> list[str]:
    """``num_samples`` samples, each drawn again until its longest copy is at most ``max_copy``.

    Sample ``i``'s first draw is the one ``sampler.generate_batch`` gives; its ``t``-th redraw
    draws from the seed ``(seed, t)`` as sample ``i``, so a seeded call always gives the same
    texts.

    Raises:
        TextgenError: a sample still copied more than ``max_copy`` characters after ``tries``
            draws (say which, and how long its shortest copy was).
    """
    if options.seed is None:
        raise TextgenError("sampling within a copy limit needs a seed")
    texts = sampler.generate_batch(num_samples, length, options=options)
    for i, text in enumerate(texts):
        copied = checker.longest_copy(text)
        for attempt in range(1, tries):
            if copied <= max_copy:
                break
            seed = int(np.random.SeedSequence([options.seed, attempt]).generate_state(1)[0])
            again = replace(options, seed=seed)
            text = _one_sample(sampler, i, length, again)
            copied = checker.longest_copy(text)
        if copied > max_copy:
            raise TextgenError(
                f"sample {i + 1} still copied {copied} characters of the corpus after {tries} "
                f"draws (limit {max_copy}); raise --max-copy or --temperature"
            )
        texts[i] = text
    return texts


def _one_sample(sampler, index: int, length: int, options) -> str:
    """Sample ``index`` of a batch drawn with ``options``, drawn alone."""
    pieces = sampler.stream_batch(1, length, options=options, first_sample=index)
    return "".join(piece[0] for piece in pieces)
