"""Corpus reading and training windows.

The corpus becomes one compact integer array; (input, target) windows shifted by one character
are cut from it on the fly by ``tf.data``, so memory holds the ids once and never a one-hot grid.
The order of windows is a pure function of (seed, epoch), which is what lets an interrupted run
resume at the exact batch where it stopped.
"""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from textgen.errors import CorpusError

DOCUMENT_SEPARATOR = "\n\n"
_BINARY_PROBE = 8192


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


def _read_one(path: Path, encoding: str, errors: str) -> str:
    try:
        raw = path.read_bytes()
    except PermissionError:
        raise CorpusError(f"cannot read {path}: permission denied") from None
    except OSError as err:
        raise CorpusError(f"cannot read {path}: {err.strerror}") from None
    if b"\x00" in raw[:_BINARY_PROBE] and encoding.lower().replace("-", "") in ("utf8", "ascii"):
        raise CorpusError(f"{path} looks like a binary file (it contains NUL bytes), not text")
    try:
        return raw.decode(encoding, errors)
    except LookupError:
        raise CorpusError(f"unknown encoding {encoding!r}") from None
    except UnicodeDecodeError as err:
        line = raw.count(b"\n", 0, err.start) + 1
        raise CorpusError(
            f"{path} is not valid {encoding}: bad byte at offset {err.start} (line {line}); "
            "give the right --encoding, or --errors replace"
        ) from None


def read_corpus(spec: str | os.PathLike, *, encoding: str = "utf-8", errors: str = "strict") -> str:
    """Read a corpus (file, folder or glob) as one string, checking that it is usable text.

    Files of a folder or glob are joined in sorted path order with a blank line between them.
    """
    parts = [_read_one(p, encoding, errors) for p in corpus_files(spec)]
    text = DOCUMENT_SEPARATOR.join(parts)
    if not text.strip():
        raise CorpusError(f"{spec} is empty (or only whitespace); there is nothing to learn")
    if len(set(text[:100_000])) < 2 and len(set(text)) < 2:
        raise CorpusError(f"{spec} has only one distinct character; there is nothing to learn")
    return text


def compact_ids(ids: np.ndarray, vocab_size: int) -> np.ndarray:
    """Store ids in the smallest unsigned type that holds the vocabulary."""
    dtype = np.uint8 if vocab_size <= 256 else np.uint16 if vocab_size <= 65536 else np.uint32
    return ids.astype(dtype, copy=False)


@dataclass(frozen=True)
class Split:
    """Training and validation ids, split by position: validation is the end of the text."""

    train: np.ndarray
    valid: np.ndarray


def split_ids(ids: np.ndarray, validation_split: float, seq_length: int) -> Split:
    """Hold out the last ``validation_split`` of the ids; both parts must fit one window."""
    if not 0.0 <= validation_split < 1.0:
        raise CorpusError(f"validation split must be in [0, 1), got {validation_split}")
    window = seq_length + 1
    n_valid = int(round(len(ids) * validation_split))
    train, valid = ids[: len(ids) - n_valid], ids[len(ids) - n_valid :]
    if len(train) < window:
        raise CorpusError(
            f"the training text has {len(train)} characters, shorter than one window of "
            f"{window} (--seq-length {seq_length} + 1); use a longer corpus or a smaller "
            "--seq-length"
        )
    if n_valid and len(valid) < window:
        raise CorpusError(
            f"the validation text has {len(valid)} characters, shorter than one window of "
            f"{window}; raise --validation-split, lower --seq-length, or use --validation-split 0"
        )
    return Split(train, valid)


def epoch_starts(n_ids: int, seq_length: int, seed: int, epoch: int) -> np.ndarray:
    """Shuffled start positions of the non-overlapping windows used in one epoch.

    Each epoch shifts the window grid by a random offset so that every position in the text
    is sometimes in the middle of a window, not only at a fixed edge.
    """
    rng = np.random.default_rng([seed, epoch])
    window = seq_length + 1
    max_offset = min(seq_length, n_ids - window)
    offset = int(rng.integers(0, max_offset + 1))
    count = (n_ids - offset - 1) // seq_length
    starts = offset + np.arange(count, dtype=np.int64) * seq_length
    return rng.permutation(starts)


def steps_per_epoch(n_ids: int, seq_length: int, batch_size: int) -> int:
    """Number of batches in an epoch (the last batch may be smaller)."""
    count = (n_ids - 1) // seq_length
    return max(1, -(-count // batch_size))


def window_dataset(ids_tensor, starts: np.ndarray, seq_length: int, batch_size: int):
    """A ``tf.data`` pipeline of (inputs, targets) int32 batches cut from ``ids_tensor``."""
    from textgen.backend import tf

    offsets = tf.range(seq_length + 1, dtype=tf.int64)

    def cut(batch_starts):
        windows = tf.cast(tf.gather(ids_tensor, batch_starts[:, None] + offsets), tf.int32)
        return windows[:, :-1], windows[:, 1:]  # (B, T) inputs, (B, T) targets

    ds = tf.data.Dataset.from_tensor_slices(starts).batch(batch_size)
    return ds.map(cut, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)


def validation_dataset(ids_tensor, n_ids: int, seq_length: int, batch_size: int):
    """Consecutive non-overlapping windows over the validation ids, in order."""
    count = (n_ids - 1) // seq_length
    starts = np.arange(count, dtype=np.int64) * seq_length
    return window_dataset(ids_tensor, starts, seq_length, batch_size)
