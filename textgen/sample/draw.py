"""Drawing the next character from logits: temperature, top-k, top-p and block-drawn noise.

Options arrive checked (``textgen.sample.options.SamplingOptions``); this module does the arithmetic
only. It must not import TensorFlow or Keras.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["LogExponentials", "fill_log_exponentials", "log_softmax", "sample_ids", "steps_ahead"]


def sample_ids(
    logits: np.ndarray,
    rng: np.random.Generator | Sequence[np.random.Generator] | LogExponentials,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    exclude: Sequence[int] | np.ndarray | None = None,
) -> np.ndarray:
    """Draw one id per row of ``logits`` (shape ``(batch, vocab)``); ``logits`` is not modified.

    Uses the exponential-race form of Gumbel-max, ``argmax(logits / T - log(E))`` with
    ``E ~ Exp(1)``, which needs no softmax. Each call uses exactly ``vocab`` exponentials per
    row, so passing one Generator per row (a sequence of ``batch`` Generators) makes a stream's
    ids independent of which other streams share the batch; a single Generator is faster. For
    many calls in a row, pass a :class:`LogExponentials` built once over the same generator(s):
    it draws ahead in blocks and gives the very same ids, faster.

    Args:
        logits: float array ``(batch, vocab)``.
        rng: one Generator for the batch, one per row, or a :class:`LogExponentials`.
        temperature: divides the logits; 0 means greedy argmax (no randomness is drawn).
        top_k: keep only the k most likely ids (ties at the k-th logit are kept).
        top_p: keep the smallest set of most likely ids whose probability reaches ``top_p``
            (applied after top-k).
        exclude: ids never drawn, greedy included (e.g. the unknown-character id).

    Returns:
        int64 ids, shape ``(batch,)``.

    The settings are not checked here: ``SamplingOptions`` checks them once, at the call.

    Raises:
        ValueError: a Generator sequence of the wrong length.
    """
    batch, vocab = logits.shape
    if temperature == 0:
        if exclude is None:
            return np.argmax(logits, axis=1)
        z = np.array(logits, dtype=np.float32)
        z[:, exclude] = -np.inf
        return np.argmax(z, axis=1)
    use_top_k = top_k is not None and top_k < vocab
    use_top_p = top_p is not None and top_p < 1.0
    noise_scale = temperature
    z = logits
    if use_top_k or use_top_p or exclude is not None:
        z = np.multiply(logits, np.float32(1.0 / temperature), dtype=np.float32)
        noise_scale = 1.0
        if exclude is not None:
            z[:, exclude] = -np.inf
        if use_top_k:
            kth = np.partition(z, vocab - top_k, axis=1)[:, vocab - top_k, None]
            z[z < kth] = -np.inf
        if use_top_p:
            mask_top_p(z, top_p)
    source = rng if isinstance(rng, LogExponentials) else LogExponentials(rng, batch, vocab, 1)
    noise = source.next(batch, vocab)
    # argmax(z / T - log E) == argmax(z - T log E) for T > 0; scaling the noise spares a copy.
    if noise_scale != 1.0:
        np.multiply(noise, np.float32(noise_scale), out=noise)
    np.subtract(z, noise, out=noise)
    return np.argmax(noise, axis=1)


class LogExponentials:
    """``log(E)`` for ``E ~ Exp(1)``, shape ``(batch, vocab)`` per call, drawn ahead in blocks.

    Sampling a batch one step at a time would otherwise call every stream's Generator once per
    step, which at 64 streams costs more than the output layer. Drawing ``block`` steps at once
    consumes each Generator in exactly the order single draws would, so the values, and the
    sampled ids, are the same as drawing ``vocab`` exponentials per row per step.

    Args:
        rng: one Generator for the whole batch, or a sequence of one Generator per row.
        batch, vocab: the shape of each step's draw.
        block: steps drawn per refill; by default as many as fit in about 4 M values (at most 64).
    """

    def __init__(
        self,
        rng: np.random.Generator | Sequence[np.random.Generator],
        batch: int,
        vocab: int,
        block: int | None = None,
    ) -> None:
        if not isinstance(rng, np.random.Generator) and len(rng) != batch:
            raise ValueError(f"need one Generator per row ({batch}), got {len(rng)}")
        if block is None:
            block = steps_ahead(batch, vocab)
        self._rng, self._shape = rng, (batch, vocab)
        self._shared = isinstance(rng, np.random.Generator)  # one Generator for all rows
        self._buffer: np.ndarray | None = None  # allocated on first use: greedy never draws
        self._block, self._next = block, block

    def next(self, batch: int, vocab: int) -> np.ndarray:
        """The next step's values, a ``(batch, vocab)`` view the caller may overwrite."""
        if (batch, vocab) != self._shape:
            raise ValueError(f"drawn for shape {self._shape}, asked for {(batch, vocab)}")
        if self._next == self._block:
            self._refill()
        t, self._next = self._next, self._next + 1
        if self._shared:
            return self._buffer[t]
        return self._buffer[:, t]

    def _refill(self) -> None:
        if self._buffer is None:
            batch, vocab = self._shape
            # A single Generator fills step by step; per-stream Generators each fill their own
            # contiguous run of steps.
            shape = (self._block, batch, vocab) if self._shared else (batch, self._block, vocab)
            self._buffer = np.empty(shape, np.float32)
        buffer = self._buffer
        if self._shared:
            fill_log_exponentials(self._rng, buffer)
        else:
            for rows, gen in zip(buffer, self._rng, strict=True):
                fill_log_exponentials(gen, rows)
        self._next = 0


def steps_ahead(rows: int, vocab: int) -> int:
    """Steps of noise to draw at once for ``rows`` rows: as many as fit in about 4 M values,
    at most 64."""
    return max(1, min(64, 4_000_000 // (rows * vocab)))


def fill_log_exponentials(gen: np.random.Generator, out: np.ndarray) -> None:
    """Fill the float32 array ``out`` with ``log(E)``, ``E ~ Exp(1)``, in ``gen``'s order."""
    gen.standard_exponential(dtype=np.float32, out=out)
    # float32 exponentials can be exactly 0; log(0) would beat even masked (-inf) ids.
    np.maximum(out, np.float32(1e-30), out=out)
    np.log(out, out=out)


def mask_top_p(z: np.ndarray, top_p: float) -> None:
    """Set to -inf, in place, every logit outside each row's nucleus of mass ``top_p``."""
    ordered = -np.sort(-z, axis=1)  # descending
    probs = np.exp(ordered - ordered[:, :1])
    probs /= probs.sum(axis=1, keepdims=True)
    # An id is kept if the mass strictly before it is still short of top_p.
    keep = np.count_nonzero(np.cumsum(probs, axis=1) - probs < top_p, axis=1)
    threshold = ordered[np.arange(z.shape[0]), keep - 1, None]
    z[z < threshold] = -np.inf


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """The model's own log-probabilities (temperature 1) of every id, float64, ``(batch, vocab)``.

    Computed in float64 so that log-probabilities summed over a long text, and compared between
    texts (beam search, best-of), do not drift with float32 rounding.
    """
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))
