"""Step a trained network one character at a time in plain numpy, for sampling.

Importing TensorFlow costs seconds and calling it once per character costs far more than the
arithmetic, so sampling runs on the weight dict from :func:`textgen.model.get_weights` (see that
module for the names) with the exact Keras cell formulas: ``LSTMCell``, ``GRUCell`` with
``reset_after=True`` and ``SimpleRNNCell`` (default activations).

Internally every per-stream quantity is stored transposed, as ``(features, batch)``: OpenBLAS
multiplies ``(gates*units, units) @ (units, batch)`` noticeably faster than the row layout, and
each gate is then a contiguous block of rows. Sigmoid gates have their weights pre-scaled by 0.5
so one ``tanh`` over the whole gate block yields them via ``sigmoid(x) = 0.5 * tanh(x / 2) + 0.5``.
This module must not import TensorFlow or Keras.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from textgen.errors import TextgenError

__all__ = ["LogExponentials", "RecurrentStack", "sample_ids"]

_GATES = {"lstm": 4, "gru": 3, "simple": 1}
_STATE_SIZE = {"lstm": 2, "gru": 1, "simple": 1}


def _f32(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.float32)


class RecurrentStack:
    """Embedding -> recurrent layers -> Dense, stepped one id per stream per call.

    Args:
        weights: name -> array dict as produced by ``textgen.model.get_weights``; the number of
            layers is the number of consecutive ``rnn_{i}/kernel`` entries.
        cell: ``"lstm"``, ``"gru"`` or ``"simple"``, as given to ``build_model``.

    Raises:
        TextgenError: unknown cell, or weights missing or shaped inconsistently.

    The stack starts with one stream in the zero state; call :meth:`reset` to change that.
    """

    def __init__(self, weights: Mapping[str, np.ndarray], cell: str = "lstm") -> None:
        if cell not in _GATES:
            raise TextgenError(f"unknown cell {cell!r}; choose one of {', '.join(_GATES)}")
        self.cell = cell
        gates = _GATES[cell]
        num_layers = 0
        while f"rnn_{num_layers}/kernel" in weights:
            num_layers += 1
        if num_layers == 0:
            raise TextgenError("the weights hold no recurrent layer (expected rnn_0/kernel)")
        needed = ["embedding", "dense/kernel", "dense/bias"]
        for i in range(num_layers):
            needed += [f"rnn_{i}/kernel", f"rnn_{i}/recurrent_kernel", f"rnn_{i}/bias"]
        missing = [name for name in needed if name not in weights]
        if missing:
            raise TextgenError(f"the weights are missing {', '.join(missing)}")

        w = {name: np.asarray(weights[name], dtype=np.float64) for name in needed}
        vocab, emb_dim = w["embedding"].shape
        units = w["rnn_0/recurrent_kernel"].shape[0]
        expected = {"embedding": (vocab, emb_dim)}
        for i in range(num_layers):
            expected[f"rnn_{i}/kernel"] = (emb_dim if i == 0 else units, gates * units)
            expected[f"rnn_{i}/recurrent_kernel"] = (units, gates * units)
            expected[f"rnn_{i}/bias"] = (2, 3 * units) if cell == "gru" else (gates * units,)
        expected["dense/kernel"] = (units, vocab)
        expected["dense/bias"] = (vocab,)
        for name, shape in expected.items():
            if w[name].shape != shape:
                raise TextgenError(
                    f"weight {name} has shape {w[name].shape}, expected {shape} for a "
                    f"{num_layers}-layer {cell} network with vocabulary {vocab}, "
                    f"embedding {emb_dim} and {units} units"
                )

        self.num_layers = num_layers
        self.units = units
        self.vocab_size = vocab
        self.embedding_dim = emb_dim
        self._prepare(w)
        self._advance = {"lstm": self._step_lstm, "gru": self._step_gru}.get(
            cell, self._step_simple
        )
        self._batch = -1
        self.reset(1)

    # -- weight preparation -------------------------------------------------------------------

    def _prepare(self, w: dict[str, np.ndarray]) -> None:
        """Reorder, scale and transpose the weights into the layout the step loop wants."""
        n, cell = self.units, self.cell
        prepared = []
        for i in range(self.num_layers):
            kernel = w[f"rnn_{i}/kernel"]
            recurrent = w[f"rnn_{i}/recurrent_kernel"]
            bias = w[f"rnn_{i}/bias"]
            rec_bias_h = None
            if cell == "lstm":
                # Keras order is i, f, c, o; putting o before c makes the sigmoid gates one block.
                order = np.r_[0 : 2 * n, 3 * n : 4 * n, 2 * n : 3 * n]
                kernel, recurrent, bias = kernel[:, order], recurrent[:, order], bias[order]
                scale = np.r_[np.full(3 * n, 0.5), np.ones(n)]
            elif cell == "gru":
                # Recurrent z/r biases simply add to the input ones; the candidate's recurrent
                # bias sits inside r * (...) so it has to stay separate.
                rec_bias_h = bias[1, 2 * n :].copy()
                bias = bias[0] + np.r_[bias[1, : 2 * n], np.zeros(n)]
                scale = np.r_[np.full(2 * n, 0.5), np.ones(n)]
            else:
                scale = np.ones(n)
            kernel, recurrent, bias = kernel * scale, recurrent * scale, bias * scale
            prepared.append((kernel, recurrent, bias, rec_bias_h))

        kernel0, recurrent0, bias0, rec_bias_h0 = prepared[0]
        # Layer 0 sees only embedding rows, so its whole input projection is a table lookup.
        self._table = _f32(w["embedding"] @ kernel0 + bias0)  # (vocab, gates*units)
        self._table_t = _f32(self._table.T)
        self._recurrent0 = _f32(recurrent0.T)
        self._deep = []
        for kernel, recurrent, bias, rec_bias_h in prepared[1:]:
            if cell == "gru":
                mats = (_f32(kernel.T), _f32(recurrent.T))
            else:
                # Input and recurrent kernels stacked: the layer below's h and this layer's h
                # are adjacent rows of the state buffer, so one matmul covers both.
                mats = (_f32(np.concatenate([kernel, recurrent]).T),)
            extra = None if rec_bias_h is None else _f32(rec_bias_h[:, None])
            self._deep.append((mats, _f32(bias[:, None]), extra))
        self._gru_bias0 = None if rec_bias_h0 is None else _f32(rec_bias_h0[:, None])
        # The output layer runs transposed too, (vocab, units) @ (units, batch): at 64 streams
        # that and one small transposing copy take half the time of the row layout.
        self._dense_kernel_t = _f32(w["dense/kernel"].T)
        self._dense_bias_t = _f32(w["dense/bias"][:, None])

    # -- state ----------------------------------------------------------------------------------

    @property
    def batch_size(self) -> int:
        """Number of streams stepped together."""
        return self._batch

    def reset(self, batch_size: int = 1) -> None:
        """Set ``batch_size`` streams, all in the zero state."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if batch_size != self._batch:
            self._allocate(batch_size)
        self._h.fill(0.0)
        if self._c is not None:
            self._c.fill(0.0)

    def _allocate(self, batch: int) -> None:
        n, layers, gates = self.units, self.num_layers, _GATES[self.cell]
        self._batch = batch
        self._h = np.zeros((layers * n, batch), np.float32)
        self._c = np.zeros((layers * n, batch), np.float32) if self.cell == "lstm" else None
        self._g = np.empty((gates * n, batch), np.float32)
        if batch == 1:
            # A single stream gathers one contiguous table row, seen as a (features, 1) column.
            self._gather = (self._table, 0, np.empty((1, gates * n), np.float32))
            self._x = self._gather[2].T
        else:
            self._x = np.empty((gates * n, batch), np.float32)
            self._gather = (self._table_t, 1, self._x)
        self._logits = np.empty((batch, self.vocab_size), np.float32)
        self._logits_t = np.empty((self.vocab_size, batch), np.float32)
        self._h_top = self._h[(layers - 1) * n :]
        # Per-layer views, built once so the step loop does no slicing.
        self._plan = []
        for i in range(layers):
            h = self._h[i * n : (i + 1) * n]
            c = None if self._c is None else self._c[i * n : (i + 1) * n]
            if i == 0:
                mats, inp, bias, extra = (self._recurrent0,), h, self._x, self._gru_bias0
            else:
                mats, bias, extra = self._deep[i - 1]
                below = self._h[(i - 1) * n : i * n]
                inp = self._h[(i - 1) * n : (i + 1) * n] if self.cell != "gru" else below
            self._plan.append((mats, inp, bias, extra, h, c))
        g = self._g
        self._views = tuple(g[k * n : (k + 1) * n] for k in range(gates))

    @property
    def state(self) -> np.ndarray:
        """A copy of the state, shape ``(num_layers, k, batch, units)``; k is 2 for LSTM (h, c).

        Assigning an array of that shape (any batch size) replaces the state, which allows
        priming one stream and then ``np.repeat(state, n, axis=2)`` to fork it into n streams.
        """
        n, layers = self.units, self.num_layers
        out = np.empty((layers, _STATE_SIZE[self.cell], self._batch, n), np.float32)
        for i in range(layers):
            out[i, 0] = self._h[i * n : (i + 1) * n].T
            if self._c is not None:
                out[i, 1] = self._c[i * n : (i + 1) * n].T
        return out

    @state.setter
    def state(self, value: np.ndarray) -> None:
        value = np.asarray(value, dtype=np.float32)
        k = _STATE_SIZE[self.cell]
        if (
            value.ndim != 4
            or value.shape[:2] != (self.num_layers, k)
            or value.shape[3] != self.units
        ):
            raise ValueError(
                f"state must have shape ({self.num_layers}, {k}, batch, {self.units}), "
                f"got {value.shape}"
            )
        if value.shape[2] != self._batch:
            self._allocate(value.shape[2])
        n = self.units
        for i in range(self.num_layers):
            self._h[i * n : (i + 1) * n] = value[i, 0].T
            if self._c is not None:
                self._c[i * n : (i + 1) * n] = value[i, 1].T

    # -- stepping -------------------------------------------------------------------------------

    def step(self, ids: np.ndarray) -> np.ndarray:
        """Advance every stream by one input id and return the next-id logits.

        Args:
            ids: integer array of shape ``(batch_size,)``, each in ``[0, vocab_size)``. Ids are
                not range-checked here (out-of-range ids wrap around); :meth:`feed` checks them.

        Returns:
            float32 logits of shape ``(batch_size, vocab_size)``, C-contiguous. This is an
            internal buffer, overwritten in place by the next ``step``/``feed``; copy it to keep
            it. (Changing the batch size via ``reset`` or ``state`` allocates a new buffer.)
        """
        table, axis, out = self._gather
        # "wrap" skips numpy's bounds handling per element: about half the time of "clip".
        np.take(table, ids, axis=axis, out=out, mode="wrap")
        self._advance()
        logits_t = self._logits_t
        np.matmul(self._dense_kernel_t, self._h_top, out=logits_t)
        np.add(logits_t, self._dense_bias_t, out=logits_t)
        np.copyto(self._logits, logits_t.T)
        return self._logits

    def feed(self, ids: np.ndarray) -> np.ndarray:
        """Step through ids of shape ``(batch_size, time)`` and return the last step's logits.

        Raises:
            ValueError: wrong shape, empty sequence or an id outside the vocabulary.
        """
        ids = np.asarray(ids)
        if ids.ndim != 2 or ids.shape[0] != self._batch or ids.shape[1] == 0:
            raise ValueError(f"ids must have shape ({self._batch}, time>0), got {ids.shape}")
        if ids.min() < 0 or ids.max() >= self.vocab_size:
            raise ValueError(f"ids must lie in [0, {self.vocab_size})")
        columns = np.ascontiguousarray(ids.T)
        for t in range(columns.shape[0]):
            logits = self.step(columns[t])
        return logits

    def _step_lstm(self) -> None:
        g = self._g
        i_gate, f_gate, o_gate, candidate = self._views
        sigmoids = g[: 3 * self.units]
        for mats, inp, bias, _, h, c in self._plan:
            np.matmul(mats[0], inp, out=g)
            np.add(g, bias, out=g)
            np.tanh(g, out=g)
            np.multiply(sigmoids, 0.5, out=sigmoids)
            np.add(sigmoids, 0.5, out=sigmoids)
            np.multiply(c, f_gate, out=c)
            np.multiply(i_gate, candidate, out=i_gate)
            np.add(c, i_gate, out=c)
            np.tanh(c, out=i_gate)
            np.multiply(o_gate, i_gate, out=h)

    def _step_gru(self) -> None:
        g, x, n = self._g, self._x, 2 * self.units
        z_gate, r_gate, candidate = self._views
        zr, x_zr, x_h = g[:n], x[:n], x[n:]
        for mats, inp, bias, extra, h, _ in self._plan:
            if len(mats) == 2:  # deeper layer: input projection from the layer below
                np.matmul(mats[0], inp, out=x)
                np.add(x, bias, out=x)
            np.matmul(mats[-1], h, out=g)
            np.add(zr, x_zr, out=zr)
            np.tanh(zr, out=zr)
            np.multiply(zr, 0.5, out=zr)
            np.add(zr, 0.5, out=zr)
            np.add(candidate, extra, out=candidate)
            np.multiply(candidate, r_gate, out=candidate)
            np.add(candidate, x_h, out=candidate)
            np.tanh(candidate, out=candidate)
            # z * h + (1 - z) * hh == hh + z * (h - hh)
            np.subtract(h, candidate, out=h)
            np.multiply(h, z_gate, out=h)
            np.add(h, candidate, out=h)

    def _step_simple(self) -> None:
        g = self._g
        for mats, inp, bias, _, h, _ in self._plan:
            np.matmul(mats[0], inp, out=g)
            np.add(g, bias, out=g)
            np.tanh(g, out=h)


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

    Raises:
        ValueError: a setting out of range, or a Generator sequence of the wrong length.
    """
    if not math.isfinite(temperature) or temperature < 0:
        raise ValueError(f"temperature must be a finite number >= 0, got {temperature}")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
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
            _mask_top_p(z, top_p)
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
            block = max(1, min(64, 4_000_000 // (batch * vocab)))
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
            self._rng.standard_exponential(dtype=np.float32, out=buffer)
        else:
            for rows, gen in zip(buffer, self._rng, strict=True):
                gen.standard_exponential(dtype=np.float32, out=rows)
        # float32 exponentials can be exactly 0; log(0) would beat even masked (-inf) ids.
        np.maximum(buffer, np.float32(1e-30), out=buffer)
        np.log(buffer, out=buffer)
        self._next = 0


def _mask_top_p(z: np.ndarray, top_p: float) -> None:
    """Set to -inf, in place, every logit outside each row's nucleus of mass ``top_p``."""
    ordered = -np.sort(-z, axis=1)  # descending
    probs = np.exp(ordered - ordered[:, :1])
    probs /= probs.sum(axis=1, keepdims=True)
    # An id is kept if the mass strictly before it is still short of top_p.
    keep = np.count_nonzero(np.cumsum(probs, axis=1) - probs < top_p, axis=1)
    threshold = ordered[np.arange(z.shape[0]), keep - 1, None]
    z[z < threshold] = -np.inf
