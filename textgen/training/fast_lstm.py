"""A faster LSTM for training: Keras LSTM maths with a hand-written backward pass.

Tensor maths only, like Keras's ``backend.lstm``: a sequence and weights in, a sequence and the
final state out. It knows nothing of the language model; ``textgen.training.forward`` calls it.

Only the recurrent product and the gate arithmetic run inside the time loops, on states kept
transposed, (H, B), so that the weights are each product's first operand (see ``_forward``).
Everything that does not depend on the previous step is done for all timesteps at once: the
input projection before the forward loop, and the weight gradients ``dW = X^T dZ``,
``dU = H_prev^T dZ``, ``db = sum dZ`` after the backward loop, as a few large matrix products
that keep both cores busy. On top of that:

- the batch is split into two chains with their own loops, which TF runs concurrently, so one
  chain's small element-wise ops overlap the other chain's matrix products;
- the first layer projects the embedding table rather than every embedded timestep;
- one sigmoid serves all four gates (see ``_forward``), and the forward pass leaves behind
  exactly the per-step factors the backward loop multiplies by.

With ``matmul_dtype=tf.bfloat16`` the large products (``U^T h`` and ``U dZ`` in the loops,
the weight gradients after them, the input projection of a layer fed by another) take bfloat16
operands; oneDNN accumulates them in float32 and rounds the result. The weights stay float32 (the
optimizer's master copy), and so do the cell state, the gate arithmetic, the per-id gradient sums
and everything the loss sees: only the operands of those products are rounded. The small products
of the embedding table stay float32, since they cost nothing.

The loops are ``tf.while_loop`` over TensorArrays (``tf.scan`` measured no faster and cannot
peel the first step). The weights are the Keras ones (``kernel`` (D, 4H), ``recurrent_kernel``
(H, 4H), ``bias`` (4H,), gate order i, f, c, o), so a model trained through this path loads
unchanged into a stock ``keras.layers.LSTM``.
"""

from __future__ import annotations

from textgen.backend import tf
from textgen.errors import TextgenError

# Each step depends on the last, so more than a little lookahead (for reads and writes) buys
# nothing; 1, 2 and 10 measured the same.
_PARALLEL_ITERATIONS = 2


def _product(a, b, dtype: tf.DType, **kwargs) -> tf.Tensor:
    """``a @ b`` with both operands in ``dtype``, returned in the states' type.

    An operand already in ``dtype`` (a weight cast once before a loop) is used as it is; the
    result takes the type of an operand that was not (both were: ``dtype``).
    """
    if dtype == a.dtype and dtype == b.dtype:
        return tf.matmul(a, b, **kwargs)
    result = a.dtype if a.dtype != dtype else b.dtype
    return tf.cast(tf.matmul(tf.cast(a, dtype), tf.cast(b, dtype), **kwargs), result)


def _summed_product(a, b, dtype: tf.DType, rows: int) -> tf.Tensor:
    """``a^T b`` for ``a`` (K, M) and ``b`` (K, N), summed over chunks of ``rows`` rows of K.

    The weight gradients are such products of depth K = T x B. TensorFlow's float32 kernel ran
    the whole depth at about 42 GFLOP/s a core on an AVX2 CPU (AMD Zen 3) against 65-70 for the
    same work in chunks of 512 to 1024 rows, so ``rows`` > 0 sums chunks in a loop, starting
    from the first chunk's product (so the sum is in the product's own type); 0 is one product.
    """

    def chunk(i):
        return _product(a[i : i + rows], b[i : i + rows], dtype, transpose_a=True)

    def body(i, total):
        return i + rows, total + chunk(i)

    if rows <= 0:
        return _product(a, b, dtype, transpose_a=True)
    _, total = tf.while_loop(lambda i, _: i < tf.shape(a)[0], body, (rows, chunk(0)))
    return total


def _gate_scale(units: tf.Tensor, dtype: tf.DType, candidate: float) -> tf.Tensor:
    """Column scale (4H,): ``candidate`` on the candidate (c) gate's columns, 1 elsewhere."""
    ones = tf.ones([units], dtype)
    return tf.concat([ones, ones, candidate * ones, ones], axis=0)


def _forward(step_input, steps, recurrent_kernel_t, h0, c0, batch_dim, dtype):
    """Run the recurrence; ``step_input(t)`` gives step t's input pre-activations, (4H, B).

    The states are kept transposed, (H, B), so that each step's product is ``U^T h`` with the
    large matrix as its first operand: oneDNN then uses the weights as they lie, where ``h U``
    makes it repack them into its blocked layout at every call. With a 1x512 LSTM pinned to one
    core a product took 118 against 192 us for 16 rows and 133 against 227 for 32 (bfloat16),
    and float32 gains too. ``recurrent_kernel_t`` is U^T (4H, H).

    The pre-activations and ``recurrent_kernel_t`` have their candidate rows doubled: since
    ``tanh(z) == 2 * sigmoid(2 z) - 1`` (and doubling is exact in floating point), one sigmoid
    over all 4H rows then serves every gate. ``h0`` of None means a zero initial state, which
    lets the first step skip its matrix product; else ``h0`` and ``c0`` are (H, B). ``batch_dim``
    is the static batch size or None. ``dtype`` is the float type of the states;
    ``recurrent_kernel_t`` may be in a narrower one, the type of the products' operands.

    Returns time-major TensorArrays of the hidden states h (T, B, H), and, transposed, of what
    the backward pass needs, computed here while it is still in cache: ``p`` (T, 4H, B), ``q``
    and ``f`` (T, H, B) as described in ``_backward``; and the final cell state (H, B).
    """
    units = recurrent_kernel_t.shape[1]
    gates_shape = tf.TensorShape([recurrent_kernel_t.shape[0], batch_dim])
    cell_shape = tf.TensorShape([units, batch_dim])

    def cell(z, c_prev):
        s = tf.sigmoid(z)
        i, f, sg, o = tf.split(s, 4, axis=0)
        g = 2 * sg - 1
        if c_prev is None:
            c_prev = tf.zeros_like(i)
            c = i * g
        else:
            c = f * c_prev + i * g
        tc = tf.tanh(c)
        h = o * tc
        # Activation derivatives s (1 - s); the candidate gate's true one, 1 - g^2, is 4 times
        # this, and that factor is folded into the weights in the backward pass.
        p = tf.concat([g, c_prev, i, tc], axis=0) * (s - s * s)
        q = o - h * tc  # o * (1 - tanh(c)^2)
        return h, c, p, q, f

    def new_ta(shape):
        return tf.TensorArray(dtype, size=steps, element_shape=shape)

    def write(t, tas, h, p, q, f):
        values = (tf.transpose(h), p, q, f)  # h once per step, in cache, in the outputs' layout
        return tuple(ta.write(t, v) for ta, v in zip(tas, values, strict=True))

    h_shape = tf.TensorShape([batch_dim, units])
    tas = (new_ta(h_shape), new_ta(gates_shape), new_ta(cell_shape), new_ta(cell_shape))
    if h0 is None:
        h, c, p, q, f = cell(step_input(0), None)
        tas = write(0, tas, h, p, q, f)
        start = tf.constant(1)
    else:
        h, c, start = h0, c0, tf.constant(0)

    def body(t, h, c, tas):
        z = step_input(t) + _product(recurrent_kernel_t, h, recurrent_kernel_t.dtype)
        h, c, p, q, f = cell(z, c)
        return t + 1, h, c, write(t, tas, h, p, q, f)

    _, _, c, tas = tf.while_loop(
        lambda t, *_: t < steps,
        body,
        (start, h, c, tas),
        parallel_iterations=_PARALLEL_ITERATIONS,
    )
    return (*tas, c)


BACKWARD_PRODUCTS = ("blocks", "whole")


def _recurrent_backward_product(recurrent_kernel, form: str):
    """Return ``product(dz)``: ``U dz`` for U (H, 4H) and dz (4H, B), in the given ``form``.

    ``"whole"`` is one product of depth 4H. ``"blocks"`` sums four (H, H) @ (H, B) blocks of
    one batched product, in the states' type: oneDNN's bfloat16 kernel ran the depth-4H product
    at half the speed of the forward loop's depth-H one at 16 rows (a 1x512 LSTM on one core of
    an AVX512-BF16 EPYC: 204 against 97 us; as blocks 102 us), and a training step at batch 32
    there ran about 1.2x faster with blocks (1.07x in float32). On an AVX2 CPU (Zen 3) the
    batched product is the slow one: 2.5 against 1.2 ms at 32 rows, and whole training steps
    ran 1.18x faster at batch 64 and 1.27x at batch 32 with ``"whole"``.
    ``textgen.training.step_plan`` chooses. ``recurrent_kernel`` is already in the operands' type.
    """
    if form == "whole":
        return lambda dz: _product(recurrent_kernel, dz, recurrent_kernel.dtype)
    if form != "blocks":
        raise TextgenError(f"backward product must be one of {', '.join(BACKWARD_PRODUCTS)}")
    units = recurrent_kernel.shape[0]
    blocks = tf.transpose(tf.reshape(recurrent_kernel, [units, 4, units]), [1, 0, 2])  # (4, H, H)

    def product(dz):
        parts = _product(blocks, tf.reshape(dz, [4, units, -1]), blocks.dtype)  # (4, H, B)
        return tf.reduce_sum(parts, axis=0)  # (H, B)

    return product


def _backward(d_outputs, d_h_last, d_c_last, p_ta, q_ta, f_ta, recurrent_kernel, need_state, form):
    """Back-propagate through the recurrence, in the transposed layout of ``_forward``.

    With dc_t the gradient reaching c_t, the pre-activation gradient is
    ``dZ_t = [dc, dc, dc, dh] * p_t`` and ``dc_{t-1} = dc_t * f_t`` where
    ``dc_t = dc_t' + dh_t * q_t``, so the loop is a handful of element-wise ops and one product,
    ``U dZ_t``, again with the large matrix first, in ``form`` (see
    ``_recurrent_backward_product``). The candidate
    rows of dZ come out a quarter of their true value; ``recurrent_kernel`` (U, H x 4H) must have
    those columns scaled by 4 to compensate. Its dtype is that of the products' operands.
    ``d_outputs`` is (T, B, H) and ``d_h_last``, ``d_c_last`` are (H, B).

    Returns the stacked dZ (T, B, 4H) and the gradients of h0 (None unless ``need_state``) and
    c0, both (H, B).
    """
    steps = tf.shape(d_outputs)[0]
    recurrent_product = _recurrent_backward_product(recurrent_kernel, form)
    batch_dim = d_outputs.shape[1]
    dz_ta = tf.TensorArray(
        d_outputs.dtype, size=steps, element_shape=[batch_dim, p_ta.element_shape[0]]
    )

    def grads_at(t, dh_rec, dc_rec):
        dh = tf.transpose(d_outputs[t]) + dh_rec
        dc = dc_rec + dh * q_ta.read(t)
        dz = tf.concat([dc, dc, dc, dh], axis=0) * p_ta.read(t)
        return dz, dc * f_ta.read(t)

    def body(t, dh_rec, dc_rec, dz_ta):
        dz, dc_rec = grads_at(t, dh_rec, dc_rec)
        dh_rec = recurrent_product(dz)
        return t - 1, dh_rec, dc_rec, dz_ta.write(t, tf.transpose(dz))

    _, dh_rec, dc_rec, dz_ta = tf.while_loop(
        lambda t, *_: t > 0,
        body,
        (steps - 1, d_h_last, d_c_last, dz_ta),
        parallel_iterations=_PARALLEL_ITERATIONS,
    )
    # Step 0 is peeled off so its recurrent product is only paid for when asked for.
    dz0, dc0 = grads_at(0, dh_rec, dc_rec)
    dz_ta = dz_ta.write(0, tf.transpose(dz0))
    dh0 = recurrent_product(dz0) if need_state else None
    return dz_ta.stack(), dh0, dc0


def _lstm_chain(x, w, u, b, state, ids=None, matmul_dtype=None, backward="blocks", rows=0):
    """One LSTM over time-major inputs with the hand-written gradient attached.

    The inputs are ``x`` (T, B, D), or, when ``ids`` (T, B) is given, rows of the embedding
    table ``x`` (V, D). The latter projects the small table instead of every timestep
    (``x[ids] @ W == (x @ W)[ids]``), which saves the input projection, the input gradient and
    the kernel gradient their large matrix products. ``matmul_dtype`` is the operand type of the
    large products (None: ``x``'s own); ``backward`` the form of the backward loop's product;
    ``rows`` the chunk of the weight gradients' products (``_summed_product``).
    """
    dtype = x.dtype
    mm = matmul_dtype or dtype
    need_state = state is not None

    @tf.custom_gradient
    def run(x, w, u, b, *h0c0):
        units = tf.shape(u)[0]
        double = _gate_scale(units, dtype, 2.0)
        w2, b2 = w * double, b * double
        if ids is None:
            steps, batch, depth = tf.shape(x)[0], tf.shape(x)[1], tf.shape(x)[2]
            x2d = tf.reshape(x, [-1, depth])
            zx = tf.reshape(tf.nn.bias_add(_product(x2d, w2, mm), b2), [steps, batch, 4 * units])
            zx_t = tf.transpose(zx, [0, 2, 1])  # (T, 4H, B), the recurrence's layout
            batch_dim = x.shape[1]

            def step_input(t):
                return zx_t[t]

        else:
            steps, batch = tf.shape(ids)[0], tf.shape(ids)[1]
            table = tf.nn.bias_add(tf.matmul(x, w2), b2)  # (V, 4H)
            batch_dim = ids.shape[1]

            def step_input(t):
                return tf.transpose(tf.gather(table, ids[t]))

        h0, c0 = (tf.transpose(s) for s in h0c0) if need_state else (None, None)
        # Scaling after the transpose keeps grappler from folding the transpose into a
        # transposed-operand product, which oneDNN runs several times slower here.
        u2_t = tf.cast(tf.transpose(u) * double[:, tf.newaxis], mm)
        h_ta, p_ta, q_ta, f_ta, c_last = _forward(step_input, steps, u2_t, h0, c0, batch_dim, dtype)
        hs = h_ta.stack()

        def grad(d_outputs, d_h_last, d_c_last):
            zeros = tf.zeros([units, batch], dtype)
            d_outputs = tf.zeros_like(hs) if d_outputs is None else d_outputs
            d_h_last = zeros if d_h_last is None else tf.transpose(d_h_last)
            d_c_last = zeros if d_c_last is None else tf.transpose(d_c_last)
            quad = _gate_scale(units, dtype, 4.0)
            w_t = tf.transpose(w) * quad[:, tf.newaxis]
            dz, dh0, dc0 = _backward(
                d_outputs,
                d_h_last,
                d_c_last,
                p_ta,
                q_ta,
                f_ta,
                tf.cast(u * quad, mm),
                need_state,
                backward,
            )
            h0_rows = h0c0[0] if need_state else None  # the caller's (B, H) layout
            dh0 = tf.transpose(dh0) if need_state else None
            dc0 = tf.transpose(dc0)
            dz2d = tf.reshape(dz, [-1, 4 * units])
            if ids is None:
                h_init = h0_rows if need_state else tf.zeros([batch, units], dtype)
                h_prev = tf.concat([h_init[tf.newaxis], hs[:-1]], axis=0)
                # One product gives dW, dU and db: [X | H_prev | 1]^T dZ.
                stacked = tf.concat(
                    [x2d, tf.reshape(h_prev, [-1, units]), tf.ones([steps * batch, 1], dtype)],
                    axis=1,
                )
                dwub = _summed_product(stacked, dz2d, mm, rows) * quad
                dw, du, db = tf.split(dwub, [depth, units, 1], axis=0)
                db = tf.reshape(db, [-1])
                dx = tf.reshape(_product(dz2d, w_t, mm), tf.shape(x))
            else:
                # Gradient of the projected table: the dZ rows summed per id.
                d_table = tf.math.unsorted_segment_sum(dz2d, tf.reshape(ids, [-1]), tf.shape(x)[0])
                dx = tf.matmul(d_table, w_t)
                dw = tf.matmul(x, d_table, transpose_a=True) * quad
                db = tf.reduce_sum(d_table, axis=0) * quad
                # Leading-axis slices are normally views, so this H_prev^T dZ copies nothing.
                du = _summed_product(
                    tf.reshape(hs[:-1], [-1, units]), tf.reshape(dz[1:], [-1, 4 * units]), mm, rows
                )
                if need_state:
                    du += tf.matmul(h0_rows, dz[0], transpose_a=True)
                du *= quad
            return (dx, dw, du, db, dh0, dc0) if need_state else (dx, dw, du, db)

        return (hs, hs[-1], tf.transpose(c_last)), grad

    return run(x, w, u, b, *(state or ()))


def _run_chains(source, weights, initial_state, ids, chains, matmul_dtype, backward, rows):
    """Run ``_lstm_chain`` on ``chains`` slices of the batch; time-major in and out."""
    dtype = source.dtype
    if matmul_dtype is not None:
        matmul_dtype = tf.as_dtype(matmul_dtype)
    weights = [tf.convert_to_tensor(v, dtype) for v in weights]
    state = None
    if initial_state is not None:
        state = [tf.convert_to_tensor(s, dtype) for s in initial_state]
    if chains < 1:
        raise TextgenError(f"chains must be at least 1, got {chains}")
    if chains == 1:
        return _lstm_chain(source, *weights, state, ids, matmul_dtype, backward, rows)
    # The batch rows are independent, so split them into chains with their own time loops. TF
    # runs the loops concurrently: one chain's element-wise ops fill the gaps between the other
    # chain's matrix products, where a single chain leaves cores waiting at every step.
    batch = tf.shape(ids if ids is not None else source)[1]
    sizes = [(batch * (k + 1)) // chains - (batch * k) // chains for k in range(chains)]
    if ids is None:
        runs = [(part, None) for part in tf.split(source, sizes, axis=1)]
    else:
        runs = [(source, part) for part in tf.split(ids, sizes, axis=1)]
    states = [None] * chains
    if state is not None:
        states = list(zip(*(tf.split(s, sizes, axis=0) for s in state), strict=True))
    results = [
        _lstm_chain(x, *weights, list(s) if s else None, part_ids, matmul_dtype, backward, rows)
        for (x, part_ids), s in zip(runs, states, strict=True)
    ]
    outputs, h_last, c_last = zip(*results, strict=True)
    return tf.concat(outputs, axis=1), tf.concat(h_last, axis=0), tf.concat(c_last, axis=0)


def lstm_sequence(
    inputs: tf.Tensor,
    kernel: tf.Tensor,
    recurrent_kernel: tf.Tensor,
    bias: tf.Tensor,
    initial_state: tuple[tf.Tensor, tf.Tensor] | None = None,
    *,
    time_major: bool = False,
    chains: int = 2,
    matmul_dtype: tf.DType | str | None = None,
    backward: str = "blocks",
    gradient_rows: int = 0,
) -> tuple[tf.Tensor, tuple[tf.Tensor, tf.Tensor]]:
    """Run a Keras-compatible LSTM over a whole sequence with a fast custom gradient.

    Equal to ``keras.layers.LSTM(units, return_sequences=True, return_state=True)`` with the same
    weights. Works inside ``tf.function`` with unknown batch size and sequence length (T >= 1).

    Args:
        inputs: (batch, time, input_dim) float tensor, or (time, batch, input_dim) if
            ``time_major``.
        kernel: (input_dim, 4 * units), gate order i, f, c, o as in Keras.
        recurrent_kernel: (units, 4 * units).
        bias: (4 * units,).
        initial_state: optional ``(h0, c0)``, each (batch, units); zeros when omitted.
        time_major: inputs and outputs are (time, batch, ...).
        chains: independent slices of the batch run concurrently; 2 suits two cores. Any value
            gives the same result up to rounding.
        matmul_dtype: operand type of the large matrix products, e.g. ``tf.bfloat16`` (see the
            module docstring); None keeps the inputs' type, so the maths is exact to it.
        backward: the form of the backward loop's product, ``"blocks"`` or ``"whole"`` (see
            ``_recurrent_backward_product``); both give the same result up to rounding.
        gradient_rows: the weight gradients' products sum chunks of this many rows of their
            depth (T x B); 0 is one product. Any value gives the same result up to rounding.

    Returns:
        ``(outputs, (h_last, c_last))`` with outputs (batch, time, units), or (time, batch, units)
        if ``time_major``.
    """
    inputs = tf.convert_to_tensor(inputs)
    if not time_major:
        inputs = tf.transpose(inputs, [1, 0, 2])
    weights = (kernel, recurrent_kernel, bias)
    outputs, h_last, c_last = _run_chains(
        inputs, weights, initial_state, None, chains, matmul_dtype, backward, gradient_rows
    )
    if not time_major:
        outputs = tf.transpose(outputs, [1, 0, 2])
    return outputs, (h_last, c_last)


def lstm_sequence_from_ids(
    ids: tf.Tensor,
    embeddings: tf.Tensor,
    kernel: tf.Tensor,
    recurrent_kernel: tf.Tensor,
    bias: tf.Tensor,
    initial_state: tuple[tf.Tensor, tf.Tensor] | None = None,
    *,
    time_major: bool = False,
    chains: int = 2,
    matmul_dtype: tf.DType | str | None = None,
    backward: str = "blocks",
    gradient_rows: int = 0,
) -> tuple[tf.Tensor, tuple[tf.Tensor, tf.Tensor]]:
    """``lstm_sequence`` over ``embeddings[ids]``, faster than looking the rows up first.

    Gradients flow to ``embeddings`` (as a dense (vocab, input_dim) tensor) and the weights.

    Args:
        ids: int (batch, time) ids, or (time, batch) if ``time_major``.
        embeddings: (vocab, input_dim) float table.
        kernel, recurrent_kernel, bias, initial_state, time_major, chains, matmul_dtype,
            backward, gradient_rows: as ``lstm_sequence``.

    Returns:
        As ``lstm_sequence``.
    """
    ids = tf.convert_to_tensor(ids)
    if not time_major:
        ids = tf.transpose(ids)
    embeddings = tf.convert_to_tensor(embeddings)
    weights = (kernel, recurrent_kernel, bias)
    outputs, h_last, c_last = _run_chains(
        embeddings, weights, initial_state, ids, chains, matmul_dtype, backward, gradient_rows
    )
    if not time_major:
        outputs = tf.transpose(outputs, [1, 0, 2])
    return outputs, (h_last, c_last)
