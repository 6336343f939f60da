"""Training and validation windows cut from a corpus's id array.

(input, target) windows shifted by one character are cut from the ids batch by batch, so memory
holds the ids once and never a one-hot grid. The order of windows is a pure function of
(seed, epoch), which is what lets an interrupted run resume at the exact batch where it stopped.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from textgen.errors import CorpusError


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


def window_dataset(
    ids: np.ndarray, starts: np.ndarray, seq_length: int, batch_size: int
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield (inputs, targets) int32 batches of shape (B, T), cut from ``ids`` at ``starts``.

    ``ids`` may be a memory map: each batch gathers only its own windows from it, so a corpus
    much larger than memory trains without being loaded. Cutting a batch takes microseconds,
    so this is a plain generator: a ``tf.data`` pipeline doing the same measured no faster, and
    in long runs it stalled training for tens of seconds at a time with every thread idle.
    """
    offsets = np.arange(seq_length + 1)
    starts = np.asarray(starts, dtype=np.int64)
    for i in range(0, len(starts), batch_size):
        windows = ids[starts[i : i + batch_size, None] + offsets].astype(np.int32)
        yield windows[:, :-1], windows[:, 1:]


def replica_windows(
    ids: np.ndarray,
    starts: np.ndarray,
    seq_length: int,
    batch_size: int,
    rows_of: Callable[[int], list[tuple[int, int]]],
) -> Iterator[tuple[list[tuple[np.ndarray, np.ndarray]], int]]:
    """Like ``window_dataset``, but cutting only some rows of each batch.

    ``rows_of(n)`` names the ``(start, stop)`` blocks of an n-row batch that this process
    computes; each yielded item is those blocks' (inputs, targets) and the whole batch's row
    count. The batches are ``window_dataset``'s, so the data order is the single-process one,
    and a worker of a cluster gathers only its own windows from the (memory-mapped) ids.
    """
    offsets = np.arange(seq_length + 1)
    starts = np.asarray(starts, dtype=np.int64)
    for i in range(0, len(starts), batch_size):
        batch = starts[i : i + batch_size]
        parts = []
        for lo, hi in rows_of(len(batch)):
            windows = ids[batch[lo:hi, None] + offsets].astype(np.int32)
            parts.append((windows[:, :-1], windows[:, 1:]))
        yield parts, len(batch)


def validation_dataset(
    ids: np.ndarray, seq_length: int, batch_size: int, context: int = 0
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Batches of ``(inputs, targets, first)`` that score every character of ``ids`` once.

    The scored windows are consecutive and ``seq_length`` long; each is read after up to
    ``context`` characters that precede it, so a character is predicted from what came before
    it, as when sampling, rather than from a zero state at an arbitrary window edge. ``first``
    (int32, per row) is the position of the first scored character in its row; a row scores
    ``seq_length`` positions from there. ``context=0`` gives plain consecutive windows.
    """
    count = (len(ids) - 1) // seq_length
    scored = np.arange(count, dtype=np.int64) * seq_length
    context = max(0, min(context, len(ids) - 1 - seq_length))
    starts = np.maximum(scored - context, 0)
    first = (scored - starts).astype(np.int32)
    windows = window_dataset(ids, starts, seq_length + context, batch_size)
    for i, (x, y) in enumerate(windows):
        yield x, y, first[i * batch_size : (i + 1) * batch_size]
