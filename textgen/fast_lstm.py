"""A faster LSTM for training: Keras LSTM maths with a hand-written backward pass.

Only ``h @ U`` and the gate arithmetic run inside the time loop. Everything that does not depend
on the previous step is done for all timesteps at once: the input projection ``x @ W + b`` before
the forward loop, and the weight gradients ``dW = X^T dZ``, ``dU = H_prev^T dZ``, ``db = sum dZ``
after the backward loop. Large matrix products keep both cores busy far better than a hundred
small ones, which is where the speed comes from.

The weights are the Keras ones (``kernel`` (D, 4H), ``recurrent_kernel`` (H, 4H), ``bias``
(4H,), gate order i, f, c, o), so a model trained through this path loads unchanged into a stock
``keras.layers.LSTM``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import tensorflow as tf

from textgen.errors import TextgenError

if TYPE_CHECKING:
    import keras

_PARALLEL_ITERATIONS = 2


def _gate_scale(units: tf.Tensor, dtype: tf.DType) -> tf.Tensor:
    """Column scale (4H,) that is 2 on the candidate gate and 1 elsewhere.

    ``tanh(z) == 2 * sigmoid(2 z) - 1``, and scaling by 2 is exact in floating point, so scaling
    the candidate columns of the weights lets one sigmoid over all 4H columns serve every gate.
    """
    ones = tf.ones([units], dtype)
    return tf.concat([ones, ones, 2 * ones, ones], axis=0)


def _forward(zx, recurrent_kernel, h0, c0):
    """Run the recurrence over time-major pre-activations ``zx`` (T, B, 4H).

    ``zx`` and ``recurrent_kernel`` carry the candidate-gate scaling of ``_gate_scale``. Returns
    the stacked hidden states, cell states and sigmoid outputs, all time-major. ``h0``/``c0`` of
    None mean zero state, which lets the first step skip its matrix product.
    """
    steps = tf.shape(zx)[0]
    batch = tf.shape(zx)[1]
    units = tf.shape(recurrent_kernel)[0]
    dtype = zx.dtype
    zx_ta = tf.TensorArray(dtype, size=steps, element_shape=zx.shape[1:]).unstack(zx)
    cell_shape = tf.TensorShape([zx.shape[1], recurrent_kernel.shape[0]])

    def cell(z, c_prev):
        s = tf.sigmoid(z)
        i, f, sg, o = tf.split(s, 4, axis=1)
        c = f * c_prev + i * (2 * sg - 1) if c_prev is not None else i * (2 * sg - 1)
        h = o * tf.tanh(c)
        return h, c, s

    def body(t, h, c, h_ta, c_ta, s_ta):
        z = zx_ta.read(t) + tf.matmul(h, recurrent_kernel)
        h, c, s = cell(z, c)
        return t + 1, h, c, h_ta.write(t, h), c_ta.write(t, c), s_ta.write(t, s)

    def new_ta(shape):
        return tf.TensorArray(dtype, size=steps, element_shape=shape)

    h_ta = new_ta(cell_shape)
    c_ta = new_ta(cell_shape)
    s_ta = new_ta(zx.shape[1:])
    if h0 is None:
        # Zero state: the first step has no recurrent contribution.
        h, c, s = cell(zx_ta.read(0), None)
        h_ta, c_ta, s_ta = h_ta.write(0, h), c_ta.write(0, c), s_ta.write(0, s)
        start = tf.constant(1)
    else:
        h, c, start = h0, c0, tf.constant(0)
    del batch, units
    _, h, c, h_ta, c_ta, s_ta = tf.while_loop(
        lambda t, *_: t < steps,
        body,
        (start, h, c, h_ta, c_ta, s_ta),
        parallel_iterations=_PARALLEL_ITERATIONS,
    )
    return h_ta.stack(), c_ta.stack(), s_ta.stack()


def _backward(d_outputs, d_h_last, d_c_last, hs, cs, ss, c0, recurrent_kernel_t, need_state):
    """Back-propagate through the recurrence, returning dZ (T, B, 4H) and the initial-state grads.

    ``d_outputs`` is time-major (T, B, H); ``recurrent_kernel_t`` is the unscaled U^T (4H, H).
    """
    del hs
    steps = tf.shape(ss)[0]
    dtype = ss.dtype
    i, f, sg, o = tf.split(ss, 4, axis=2)
    units = tf.shape(i)[2]
    g = 2 * sg - 1
    tc = tf.tanh(cs)
    c_prev = tf.concat([c0[tf.newaxis], cs[:-1]], axis=0)
    # Derivative of each gate's activation w.r.t. its (unscaled) pre-activation; the candidate
    # gate's 4 s (1 - s) equals 1 - tanh^2.
    scale = _gate_scale(units, dtype)
    deriv = ss * (1 - ss) * (scale * scale)
    # dZ_t = [dc, dc, dc, dh] * p_t and dc_t = dc_{t+1} f_{t+1} + dh_t q_t, with p and q known
    # from the forward pass, so the loop body is only a few element-wise ops and one product.
    p = tf.concat([g, c_prev, i, tc], axis=2) * deriv
    q = o * (1 - tc * tc)
    f_next = tf.concat([f[1:], tf.zeros_like(f[:1])], axis=0)
    del f_next
    elem_shape = ss.shape[1:]
    cell_shape = cs.shape[1:]

    def unstack(x, shape):
        return tf.TensorArray(dtype, size=steps, element_shape=shape).unstack(x)

    dout_ta = unstack(d_outputs, cell_shape)
    p_ta = unstack(p, elem_shape)
    q_ta = unstack(q, cell_shape)
    f_ta = unstack(f, cell_shape)

    def grads_at(t, dh_rec, dc_rec):
        dh = dout_ta.read(t) + dh_rec
        dc = dc_rec + dh * q_ta.read(t)
        dz = tf.concat([dc, dc, dc, dh], axis=1) * p_ta.read(t)
        return dz, dc * f_ta.read(t)

    def body(t, dh_rec, dc_rec, dz_ta):
        dz, dc_rec = grads_at(t, dh_rec, dc_rec)
        return t - 1, tf.matmul(dz, recurrent_kernel_t), dc_rec, dz_ta.write(t, dz)

    dz_ta = tf.TensorArray(dtype, size=steps, element_shape=elem_shape)
    _, dh_rec, dc_rec, dz_ta = tf.while_loop(
        lambda t, *_: t > 0,
        body,
        (steps - 1, d_h_last, d_c_last, dz_ta),
        parallel_iterations=_PARALLEL_ITERATIONS,
    )
    # Step 0 is peeled off so its recurrent product is only paid for when asked for.
    dz0, dc0 = grads_at(0, dh_rec, dc_rec)
    dz_ta = dz_ta.write(0, dz0)
    dh0 = tf.matmul(dz0, recurrent_kernel_t) if need_state else None
    return dz_ta.stack(), dh0, dc0


def lstm_sequence_time_major(
    inputs: tf.Tensor,
    kernel: tf.Tensor,
    recurrent_kernel: tf.Tensor,
    bias: tf.Tensor,
    initial_state: tuple[tf.Tensor, tf.Tensor] | None = None,
) -> tuple[tf.Tensor, tuple[tf.Tensor, tf.Tensor]]:
    """Like ``lstm_sequence`` but with time-major ``inputs`` (T, B, D) and outputs (T, B, H)."""
    inputs = tf.convert_to_tensor(inputs)
    dtype = inputs.dtype
    kernel = tf.convert_to_tensor(kernel, dtype)
    recurrent_kernel = tf.convert_to_tensor(recurrent_kernel, dtype)
    bias = tf.convert_to_tensor(bias, dtype)
    need_state = initial_state is not None
    state = [tf.convert_to_tensor(s, dtype) for s in initial_state] if need_state else []

    @tf.custom_gradient
    def run(x, w, u, b, *h0c0):
        steps, batch = tf.shape(x)[0], tf.shape(x)[1]
        units = tf.shape(u)[0]
        scale = _gate_scale(units, dtype)
        x2d = tf.reshape(x, [-1, tf.shape(x)[2]])
        zx = tf.reshape(tf.matmul(x2d, w * scale) + b * scale, [steps, batch, 4 * units])
        h0, c0 = h0c0 if need_state else (None, None)
        hs, cs, ss = _forward(zx, u * scale, h0, c0)

        def grad(d_outputs, d_h_last, d_c_last):
            zeros = tf.zeros([batch, units], dtype)
            d_outputs = tf.zeros_like(hs) if d_outputs is None else d_outputs
            d_h_last = zeros if d_h_last is None else d_h_last
            d_c_last = zeros if d_c_last is None else d_c_last
            c_init = c0 if need_state else zeros
            dz, dh0, dc0 = _backward(
                d_outputs, d_h_last, d_c_last, hs, cs, ss, c_init, tf.transpose(u), need_state
            )
            dz2d = tf.reshape(dz, [-1, 4 * units])
            h_init = h0 if need_state else zeros
            h_prev = tf.reshape(tf.concat([h_init[tf.newaxis], hs[:-1]], axis=0), [-1, units])
            dx = tf.reshape(tf.matmul(dz2d, tf.transpose(w)), tf.shape(x))
            dw = tf.matmul(x2d, dz2d, transpose_a=True)
            du = tf.matmul(h_prev, dz2d, transpose_a=True)
            db = tf.reduce_sum(dz2d, axis=0)
            return (dx, dw, du, db, dh0, dc0) if need_state else (dx, dw, du, db)

        return (hs, hs[-1], cs[-1]), grad

    outputs, h_last, c_last = run(inputs, kernel, recurrent_kernel, bias, *state)
    return outputs, (h_last, c_last)


def lstm_sequence(
    inputs: tf.Tensor,
    kernel: tf.Tensor,
    recurrent_kernel: tf.Tensor,
    bias: tf.Tensor,
    initial_state: tuple[tf.Tensor, tf.Tensor] | None = None,
) -> tuple[tf.Tensor, tuple[tf.Tensor, tf.Tensor]]:
    """Run a Keras-compatible LSTM over a whole sequence with a fast custom gradient.

    Args:
        inputs: (batch, time, input_dim) float tensor.
        kernel: (input_dim, 4 * units), gate order i, f, c, o as in Keras.
        recurrent_kernel: (units, 4 * units).
        bias: (4 * units,).
        initial_state: optional ``(h0, c0)``, each (batch, units); zeros when omitted.

    Returns:
        ``(outputs, (h_last, c_last))`` with outputs (batch, time, units).
    """
    outputs, state = lstm_sequence_time_major(
        tf.transpose(inputs, [1, 0, 2]), kernel, recurrent_kernel, bias, initial_state
    )
    return tf.transpose(outputs, [1, 0, 2]), state


def _lstm_layers(model: keras.Model) -> list:
    layers = []
    while True:
        try:
            layer = model.get_layer(f"rnn_{len(layers)}")
        except ValueError:
            break
        if not isinstance(layer.cell, _keras_lstm_cell()):
            raise TextgenError(f"the fast path needs LSTM layers, {layer.name} is not one")
        layers.append(layer)
    if not layers:
        raise TextgenError("the model has no recurrent layers named rnn_0, rnn_1, ...")
    return layers


def _keras_lstm_cell() -> type:
    import keras

    return keras.layers.LSTMCell


def forward_logits(
    model: keras.Model,
    ids: tf.Tensor,
    *,
    training: bool,
    dropout_rate: float | None = None,
    seed: tf.Tensor | None = None,
) -> tf.Tensor:
    """Compute ``model(ids)`` for a ``build_model`` LSTM model through the fast LSTM path.

    Uses the model's own variables, so gradients taken through this function apply to the model.

    Args:
        model: a model from ``textgen.model.build_model`` with ``cell="lstm"``.
        ids: int (batch, time) character ids.
        training: apply dropout before the output layer.
        dropout_rate: dropout rate; None uses the model's own dropout layer's rate.
        seed: shape-[2] int tensor for the stateless dropout mask; the same seed gives the same
            mask. Required when training with a nonzero rate.

    Returns:
        Float32 logits (batch, time, vocab).
    """
    layers = _lstm_layers(model)
    if dropout_rate is None:
        dropout_rate = float(model.get_layer("dropout").rate)
    embeddings = model.get_layer("embedding").embeddings
    dense = model.get_layer("dense")
    # Everything between the embedding and the logits stays time-major, so only the small int ids
    # and the logits are transposed.
    x = tf.gather(tf.convert_to_tensor(embeddings), tf.transpose(ids))
    for layer in layers:
        cell = layer.cell
        x, _ = lstm_sequence_time_major(
            x,
            tf.convert_to_tensor(cell.kernel),
            tf.convert_to_tensor(cell.recurrent_kernel),
            tf.convert_to_tensor(cell.bias),
        )
    if training and dropout_rate > 0:
        if seed is None:
            raise TextgenError("training with dropout needs a seed")
        keep = tf.random.stateless_uniform(tf.shape(x), seed, dtype=x.dtype) >= dropout_rate
        x = tf.where(keep, x / (1 - dropout_rate), tf.zeros_like(x))
    logits = tf.tensordot(x, tf.convert_to_tensor(dense.kernel), axes=1) + tf.convert_to_tensor(
        dense.bias
    )
    return tf.transpose(logits, [1, 0, 2])
