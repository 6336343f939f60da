"""Step a trained network one character at a time in plain numpy, for sampling.

Importing TensorFlow costs seconds and calling it once per character costs far more than the
arithmetic, so sampling runs on the weight dict of ``textgen.model`` with the exact Keras cell
formulas: ``LSTMCell``, ``GRUCell`` with ``reset_after=True`` and ``SimpleRNNCell`` (default
activations).

Every per-stream quantity is stored transposed, as ``(features, batch)``: OpenBLAS multiplies
``(gates*units, units) @ (units, batch)`` noticeably faster than the row layout, and each gate is
then a contiguous block of rows. An LSTM's gate weights are pre-scaled so that one ``exp``
over the whole gate block yields them (see ``_LSTM.prepare``); a GRU's sigmoid gates are
pre-scaled by 0.5 so one ``tanh`` yields them via ``sigmoid(x) = 0.5 * tanh(x / 2) + 0.5``.
Each cell kind is one small class below: how it lays out its weights, and one step of it.
This module must not import TensorFlow or Keras.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from textgen.cells import get_cell
from textgen.config import ModelConfig
from textgen.weights import RNN_PARTS, check_weights, rnn_name, shape_of

__all__ = ["RecurrentStack"]


def _f32(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.float32)


def _product(mat: np.ndarray, x: np.ndarray, out: np.ndarray) -> None:
    """``out = mat @ x`` for ``(features, batch)`` operands; one stream as a matrix-vector product.

    OpenBLAS runs ``(2048, 512) @ (512, 1)`` as a general product of one column, about 1.45x
    slower than the matrix-vector product that ``np.dot`` makes of the same numbers seen as a
    vector (AMD Zen 3, one thread: 109 against 75 us). A single column of a C-ordered
    ``(features, 1)`` buffer is contiguous, so the vector views copy nothing.
    """
    if x.shape[1] == 1:
        np.dot(mat, x[:, 0], out=out[:, 0])
    else:
        np.matmul(mat, x, out=out)


@dataclass
class _LayerWeights:
    """One layer's weights in the engine's order and scale, not yet transposed."""

    kernel: np.ndarray  # (input, gates*units)
    recurrent: np.ndarray  # (units, gates*units)
    bias: np.ndarray  # (gates*units,)
    recurrent_bias: np.ndarray | None = None  # GRU only: the candidate's recurrent bias


@dataclass
class _Layer:
    """One layer's matrices and its views into the engine's buffers, built per batch size."""

    mats: tuple[np.ndarray, ...]  # what multiplies ``inp`` (and, for a deep GRU, ``h``)
    inp: np.ndarray  # (features, batch): layer 0's recurrent input, or the layers below
    bias: np.ndarray  # (gates*units, 1), or layer 0's gathered input projection
    recurrent_bias: np.ndarray | None
    h: np.ndarray  # (units, batch)
    c: np.ndarray | None  # LSTM only


class _LSTM:
    """Keras LSTM: gates i, f, c, o; reordered to i, f, o, c so the sigmoids are one block."""

    stacks_input = True  # deep layers multiply [h_below; h] by one stacked matrix

    @staticmethod
    def prepare(kernel, recurrent, bias, n: int) -> _LayerWeights:
        # Negated, and the candidate's doubled: one exp over the whole block then gives every
        # gate's sigmoid as 1 / (1 + exp(-z)), and the candidate's tanh as 2 sigmoid(2z) - 1.
        # numpy's float32 exp is vectorised on AVX2 where its tanh is not: on a Zen 3 the gates
        # of 64 streams took 227 us this way against 387 with one tanh and the halving.
        order = np.r_[0 : 2 * n, 3 * n : 4 * n, 2 * n : 3 * n]
        scale = np.r_[np.full(3 * n, -1.0), np.full(n, -2.0)]
        return _LayerWeights(
            kernel[:, order] * scale, recurrent[:, order] * scale, bias[order] * scale
        )

    @staticmethod
    def advance(stack: RecurrentStack) -> None:
        g = stack._g
        i_gate, f_gate, o_gate, candidate = stack._views
        for layer in stack._layers:
            c = layer.c
            _product(layer.mats[0], layer.inp, g)
            np.add(g, layer.bias, out=g)
            # exp(-z) overflows to inf for z below about -88; 1 / (1 + inf) is then the exact 0.
            with np.errstate(over="ignore"):
                np.exp(g, out=g)
            np.add(g, 1.0, out=g)
            np.divide(1.0, g, out=g)
            np.multiply(candidate, 2.0, out=candidate)
            np.subtract(candidate, 1.0, out=candidate)
            np.multiply(c, f_gate, out=c)
            np.multiply(i_gate, candidate, out=i_gate)
            np.add(c, i_gate, out=c)
            np.tanh(c, out=i_gate)
            np.multiply(o_gate, i_gate, out=layer.h)


class _GRU:
    """Keras GRU with ``reset_after=True``: gates z, r, h and two bias rows."""

    stacks_input = False  # the reset gate multiplies the recurrent part alone

    @staticmethod
    def prepare(kernel, recurrent, bias, n: int) -> _LayerWeights:
        # Recurrent z/r biases simply add to the input ones; the candidate's recurrent bias
        # sits inside r * (...) so it has to stay separate.
        recurrent_bias = bias[1, 2 * n :].copy()
        bias = bias[0] + np.r_[bias[1, : 2 * n], np.zeros(n)]
        scale = np.r_[np.full(2 * n, 0.5), np.ones(n)]
        return _LayerWeights(kernel * scale, recurrent * scale, bias * scale, recurrent_bias)

    @staticmethod
    def advance(stack: RecurrentStack) -> None:
        g, x, n = stack._g, stack._x, 2 * stack.units
        z_gate, r_gate, candidate = stack._views
        zr, x_zr, x_h = g[:n], x[:n], x[n:]
        for layer in stack._layers:
            h = layer.h
            if len(layer.mats) == 2:  # deeper layer: input projection from the layer below
                _product(layer.mats[0], layer.inp, x)
                np.add(x, layer.bias, out=x)
            _product(layer.mats[-1], h, g)
            np.add(zr, x_zr, out=zr)
            np.tanh(zr, out=zr)
            np.multiply(zr, 0.5, out=zr)
            np.add(zr, 0.5, out=zr)
            np.add(candidate, layer.recurrent_bias, out=candidate)
            np.multiply(candidate, r_gate, out=candidate)
            np.add(candidate, x_h, out=candidate)
            np.tanh(candidate, out=candidate)
            # z * h + (1 - z) * hh == hh + z * (h - hh)
            np.subtract(h, candidate, out=h)
            np.multiply(h, z_gate, out=h)
            np.add(h, candidate, out=h)


class _Simple:
    """Keras SimpleRNN with tanh."""

    stacks_input = True

    @staticmethod
    def prepare(kernel, recurrent, bias, n: int) -> _LayerWeights:
        return _LayerWeights(kernel, recurrent, bias)

    @staticmethod
    def advance(stack: RecurrentStack) -> None:
        g = stack._g
        for layer in stack._layers:
            _product(layer.mats[0], layer.inp, g)
            np.add(g, layer.bias, out=g)
            np.tanh(g, out=layer.h)


_KINDS = {"lstm": _LSTM, "gru": _GRU, "simple": _Simple}


class RecurrentStack:
    """Embedding -> recurrent layers -> Dense, stepped one id per stream per call.

    Args:
        weights: name -> array dict as produced by ``textgen.model.get_weights``.
        cell: the network's shape, a ``ModelConfig`` the weights were checked against (as a
            run's is when it is opened); or only its cell, ``"lstm"``, ``"gru"`` or
            ``"simple"``, and the shape is read from the weights and checked.

    Raises:
        TextgenError: unknown cell, or weights missing or shaped inconsistently.

    The stack starts with one stream in the zero state; call :meth:`reset` to change that.
    """

    def __init__(self, weights: Mapping[str, np.ndarray], cell: ModelConfig | str = "lstm") -> None:
        if isinstance(cell, ModelConfig):
            config = cell
        else:
            config = shape_of(weights, cell)
            check_weights(weights, config)
        self.cell = config.cell
        self.num_layers = config.num_layers
        self.units = config.units
        self.vocab_size = config.vocab_size
        self.embedding_dim = config.embedding_dim
        self._kind = get_cell(self.cell).equations(_KINDS, "the numpy engine")
        self._gates = get_cell(self.cell).gates
        self._state_size = get_cell(self.cell).state_size
        self._prepare({name: np.asarray(w, np.float64) for name, w in weights.items()})
        self._batch = -1
        self.reset(1)

    def _prepare(self, w: dict[str, np.ndarray]) -> None:
        """Reorder, scale and transpose the weights into the layout the step loop wants."""
        prepared = [
            self._kind.prepare(
                *(w[f"{rnn_name(i)}/{part}"] for part in RNN_PARTS),
                self.units,
            )
            for i in range(self.num_layers)
        ]
        first = prepared[0]
        # Layer 0 sees only embedding rows, so its whole input projection is a table lookup.
        self._table = _f32(w["embedding"] @ first.kernel + first.bias)  # (vocab, gates*units)
        self._table_t = _f32(self._table.T)
        self._recurrent0 = _f32(first.recurrent.T)
        self._bias0_extra = _column(first.recurrent_bias)
        self._deep = []
        for layer in prepared[1:]:
            if self._kind.stacks_input:
                # Input and recurrent kernels stacked: the layer below's h and this layer's h
                # are adjacent rows of the state buffer, so one matmul covers both.
                mats = (_f32(np.concatenate([layer.kernel, layer.recurrent]).T),)
            else:
                mats = (_f32(layer.kernel.T), _f32(layer.recurrent.T))
            self._deep.append((mats, _f32(layer.bias[:, None]), _column(layer.recurrent_bias)))
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
        n, layers, gates = self.units, self.num_layers, self._gates
        self._batch = batch
        self._h = np.zeros((layers * n, batch), np.float32)
        self._c = np.zeros((layers * n, batch), np.float32) if self._state_size == 2 else None
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
        self._layers = []
        for i in range(layers):
            h = self._h[i * n : (i + 1) * n]
            c = None if self._c is None else self._c[i * n : (i + 1) * n]
            if i == 0:
                layer = _Layer((self._recurrent0,), h, self._x, self._bias0_extra, h, c)
            else:
                mats, bias, extra = self._deep[i - 1]
                stacked = self._h[(i - 1) * n : (i + 1) * n]
                below = self._h[(i - 1) * n : i * n]
                inp = stacked if self._kind.stacks_input else below
                layer = _Layer(mats, inp, bias, extra, h, c)
            self._layers.append(layer)
        self._views = tuple(self._g[k * n : (k + 1) * n] for k in range(gates))

    @property
    def state(self) -> np.ndarray:
        """A copy of the state, shape ``(num_layers, k, batch, units)``; k is 2 for LSTM (h, c).

        Assigning an array of that shape (any batch size) replaces the state, which allows
        priming one stream and then ``np.repeat(state, n, axis=2)`` to fork it into n streams.
        """
        n, layers = self.units, self.num_layers
        out = np.empty((layers, self._state_size, self._batch, n), np.float32)
        for i in range(layers):
            out[i, 0] = self._h[i * n : (i + 1) * n].T
            if self._c is not None:
                out[i, 1] = self._c[i * n : (i + 1) * n].T
        return out

    @state.setter
    def state(self, value: np.ndarray) -> None:
        value = np.asarray(value, dtype=np.float32)
        k = self._state_size
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

    def layer_views(self, layer: int) -> tuple[np.ndarray, np.ndarray | None]:
        """Live views of one layer's ``h`` and ``c`` (``c`` is None but for LSTM).

        Each is ``(units, batch_size)`` float32 and changes in place at every ``step``: reading
        them costs no copy, which :attr:`state` makes of every layer. Changing the batch size
        allocates new buffers, so take the views after ``reset``.
        """
        if not 0 <= layer < self.num_layers:
            raise ValueError(f"layer must lie in [0, {self.num_layers}), got {layer}")
        rows = slice(layer * self.units, (layer + 1) * self.units)
        return self._h[rows], None if self._c is None else self._c[rows]

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
        self._kind.advance(self)
        logits_t = self._logits_t
        _product(self._dense_kernel_t, self._h_top, logits_t)
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


def _column(values: np.ndarray | None) -> np.ndarray | None:
    return None if values is None else _f32(values[:, None])
