"""The fast LSTM path must match stock Keras: forward values, gradients and whole-model logits."""

from __future__ import annotations

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")

from textgen import TextgenError  # noqa: E402
from textgen.config import Noise  # noqa: E402
from textgen.model import build_model  # noqa: E402
from textgen.training.fast_lstm import lstm_sequence, lstm_sequence_from_ids  # noqa: E402
from textgen.training.forward import make_forward  # noqa: E402

B, T, D, H = 3, 5, 4, 6


def _stock_layer(dtype: str, seed: int = 0):
    """A built stock LSTM layer with random weights, including a non-trivial bias."""
    rng = np.random.default_rng(seed)
    layer = keras.layers.LSTM(H, return_sequences=True, return_state=True, dtype=dtype)
    layer.build((B, T, D))
    cell = layer.cell
    for var in (cell.kernel, cell.recurrent_kernel, cell.bias):
        var.assign(rng.normal(scale=0.5, size=var.shape))
    return layer


def _data(dtype: str, seed: int = 1):
    rng = np.random.default_rng(seed)

    def make(*shape):
        return tf.constant(rng.normal(size=shape), dtype)

    return make(B, T, D), make(B, H), make(B, H), make(B, T, H), make(B, H), make(B, H)


def _loss(outputs, h_last, c_last, w_out, w_h, w_c):
    # Random weights on every output make each gradient path count.
    return (
        tf.reduce_sum(outputs * w_out) + tf.reduce_sum(h_last * w_h) + tf.reduce_sum(c_last * w_c)
    )


def _assert_all_close(got, want, tol):
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(
            tf.convert_to_tensor(g).numpy(), tf.convert_to_tensor(w).numpy(), rtol=tol, atol=tol
        )


@pytest.mark.parametrize(("chains", "backward"), [(1, "blocks"), (2, "whole"), (3, "blocks")])
@pytest.mark.parametrize("with_state", [False, True])
@pytest.mark.parametrize("dtype, tol", [("float64", 1e-10), ("float32", 1e-5)])
def test_forward_and_gradients_match_stock_lstm(
    with_state: bool, dtype: str, tol: float, chains: int, backward: str
) -> None:
    layer = _stock_layer(dtype)
    cell = layer.cell
    x, h0, c0, w_out, w_h, w_c = _data(dtype)
    state = (h0, c0) if with_state else None

    def loss(outputs, h_last, c_last):
        return _loss(outputs, h_last, c_last, w_out, w_h, w_c)

    sources = [x, cell.kernel, cell.recurrent_kernel, cell.bias] + ([h0, c0] if state else [])
    with tf.GradientTape(persistent=True) as tape:
        tape.watch([x, h0, c0])
        expected = layer(x, initial_state=list(state)) if state else layer(x)
        expected_loss = loss(*expected)
        outputs, (h_last, c_last) = lstm_sequence(
            x,
            cell.kernel,
            cell.recurrent_kernel,
            cell.bias,
            initial_state=state,
            chains=chains,
            backward=backward,
        )
        actual_loss = loss(outputs, h_last, c_last)

    _assert_all_close((outputs, h_last, c_last), expected, tol)
    _assert_all_close(
        tape.gradient(actual_loss, sources), tape.gradient(expected_loss, sources), tol
    )


@pytest.mark.parametrize("from_ids", [False, True])
@pytest.mark.parametrize("with_state", [False, True])
def test_bfloat16_products_stay_close_to_float64(with_state: bool, from_ids: bool) -> None:
    # bfloat16 keeps 8 significant bits: each product's operands and result are rounded to a
    # relative 2^-9, which a few steps of recurrence compound into about 1e-2 here.
    tol, vocab = 3e-2, 7
    exact, rough = _stock_layer("float64"), _stock_layer("float32")
    _, h0, c0, w_out, w_h, w_c = _data("float64")
    rng = np.random.default_rng(8)
    table = tf.constant(rng.normal(size=(vocab, D)), "float64")
    ids = tf.constant(rng.integers(0, vocab, size=(B, T)), tf.int32)
    state = (h0, c0) if with_state else None

    def run(layer, dtype, matmul_dtype):
        cell = layer.cell
        weights = [tf.convert_to_tensor(v) for v in (cell.kernel, cell.recurrent_kernel, cell.bias)]
        inputs = [tf.cast(v, dtype) for v in [table, *(state or ())]]
        with tf.GradientTape() as tape:
            tape.watch([*weights, *inputs])
            initial = inputs[1:] or None
            if from_ids:
                result = lstm_sequence_from_ids(
                    ids, inputs[0], *weights, initial, matmul_dtype=matmul_dtype
                )
            else:
                x = tf.gather(inputs[0], ids)
                result = lstm_sequence(x, *weights, initial, matmul_dtype=matmul_dtype)
            outputs, (h_last, c_last) = result
            total = _loss(outputs, h_last, c_last, *(tf.cast(w, dtype) for w in (w_out, w_h, w_c)))
        grads = tape.gradient(total, [*weights, *inputs])
        values = (outputs, h_last, c_last, *grads)
        return [tf.convert_to_tensor(v).numpy().astype("float64") for v in values]

    want = run(exact, "float64", None)
    got = run(rough, "float32", tf.bfloat16)
    _assert_all_close(got, want, tol)
    # ...and the products really were rounded: float32 alone lands far closer.
    plain = run(rough, "float32", None)
    assert max(np.abs(g - w).max() for g, w in zip(got, want, strict=True)) > 1e-4
    assert max(np.abs(p - w).max() for p, w in zip(plain, want, strict=True)) < 1e-4


@pytest.mark.parametrize("chains", [1, 2])
@pytest.mark.parametrize("with_state", [False, True])
def test_from_ids_matches_embedding_then_stock_lstm(with_state: bool, chains: int) -> None:
    dtype, tol, vocab = "float64", 1e-10, 7
    layer = _stock_layer(dtype)
    cell = layer.cell
    _, h0, c0, w_out, w_h, w_c = _data(dtype)
    rng = np.random.default_rng(8)
    table = tf.constant(rng.normal(size=(vocab, D)), dtype)
    # Repeated ids make the per-id gradient sums count.
    ids = tf.constant(rng.integers(0, vocab, size=(B, T)), tf.int32)
    state = (h0, c0) if with_state else None
    sources = [table, cell.kernel, cell.recurrent_kernel, cell.bias] + ([h0, c0] if state else [])
    with tf.GradientTape(persistent=True) as tape:
        tape.watch([table, h0, c0])
        x = tf.gather(table, ids)
        expected = layer(x, initial_state=list(state)) if state else layer(x)
        expected_loss = _loss(*expected, w_out, w_h, w_c)
        outputs, (h_last, c_last) = lstm_sequence_from_ids(
            ids, table, cell.kernel, cell.recurrent_kernel, cell.bias, state, chains=chains
        )
        actual_loss = _loss(outputs, h_last, c_last, w_out, w_h, w_c)

    _assert_all_close((outputs, h_last, c_last), expected, tol)
    _assert_all_close(
        tape.gradient(actual_loss, sources), tape.gradient(expected_loss, sources), tol
    )


def test_time_major_layout() -> None:
    layer = _stock_layer("float64")
    cell = layer.cell
    x = _data("float64")[0]
    batch_major, state = lstm_sequence(x, cell.kernel, cell.recurrent_kernel, cell.bias)
    time_major, state_tm = lstm_sequence(
        tf.transpose(x, [1, 0, 2]), cell.kernel, cell.recurrent_kernel, cell.bias, time_major=True
    )
    _assert_all_close((tf.transpose(time_major, [1, 0, 2]), *state_tm), (batch_major, *state), 0)


def test_works_in_tf_function_with_dynamic_shapes() -> None:
    layer = _stock_layer("float32")
    cell = layer.cell
    spec = tf.TensorSpec([None, None, D], tf.float32)

    @tf.function(input_signature=[spec])
    def run(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            outputs, _ = lstm_sequence(x, cell.kernel, cell.recurrent_kernel, cell.bias)
            total = tf.reduce_sum(outputs)
        return outputs, tape.gradient(total, x)

    rng = np.random.default_rng(2)
    for batch, steps in [(2, 1), (3, 7), (1, 4)]:
        x = tf.constant(rng.normal(size=(batch, steps, D)), tf.float32)
        outputs, dx = run(x)
        with tf.GradientTape() as tape:
            tape.watch(x)
            expected = layer(x)[0]
            total = tf.reduce_sum(expected)
        np.testing.assert_allclose(outputs.numpy(), expected.numpy(), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(dx.numpy(), tape.gradient(total, x).numpy(), atol=1e-5)


def forward_logits(model, ids, *, training: bool, dropout_rate: float = 0.0, seed=None):
    """The training forward pass of ``textgen.training.forward`` for a model."""
    return make_forward(model, Noise(dropout_rate))(ids, training=training, seed=seed)


def _ids(vocab: int, seed: int = 3) -> tf.Tensor:
    return tf.constant(np.random.default_rng(seed).integers(0, vocab, size=(B, T)), tf.int32)


@pytest.mark.parametrize("num_layers", [1, 2])
def test_forward_logits_matches_model(num_layers: int) -> None:
    keras.utils.set_random_seed(num_layers)
    model = build_model(11, embedding_dim=D, units=H, num_layers=num_layers, dropout=0.3)
    ids = _ids(11)
    logits = forward_logits(model, ids, training=False, dropout_rate=0.3, seed=None)
    assert logits.shape == (B, T, 11)
    np.testing.assert_allclose(logits.numpy(), model(ids).numpy(), rtol=1e-5, atol=1e-5)


def test_forward_logits_gradients_match_model() -> None:
    keras.utils.set_random_seed(4)
    model = build_model(11, embedding_dim=D, units=H, num_layers=2)
    ids = _ids(11)
    targets = _ids(11, seed=5)

    def loss(logits):
        return tf.reduce_mean(
            tf.nn.sparse_softmax_cross_entropy_with_logits(labels=targets, logits=logits)
        )

    variables = model.trainable_variables
    with tf.GradientTape(persistent=True) as tape:
        actual = loss(forward_logits(model, ids, training=False))
        expected = loss(model(ids))
    for got, want in zip(
        tape.gradient(actual, variables), tape.gradient(expected, variables), strict=True
    ):
        np.testing.assert_allclose(
            tf.convert_to_tensor(got).numpy(), tf.convert_to_tensor(want).numpy(), atol=1e-5
        )


def test_dropout_is_reproducible_per_seed() -> None:
    keras.utils.set_random_seed(6)
    model = build_model(11, embedding_dim=D, units=H, dropout=0.5)
    ids = _ids(11)

    def run(seed):
        return forward_logits(
            model, ids, training=True, dropout_rate=0.5, seed=tf.constant(seed, tf.int32)
        ).numpy()

    first, again, other = run([1, 2]), run([1, 2]), run([3, 4])
    np.testing.assert_array_equal(first, again)
    assert not np.allclose(first, other)
    inference = forward_logits(model, ids, training=False, dropout_rate=0.5).numpy()
    assert not np.allclose(first, inference)


@pytest.mark.parametrize("rate", [0.3, 0.001])
def test_dropout_drops_its_rate_and_scales_the_rest(rate: float) -> None:
    from textgen.training.forward import stateless_dropout

    x = tf.ones([400, 50, 60])  # 1.2 million elements, time-major as training draws them
    out = stateless_dropout(x, rate, tf.constant([5, 7], tf.int32), batch_axis=1).numpy()
    dropped = (out == 0).mean()
    # Within five binomial standard deviations; a rate lost to coarse random bits (0.001 with
    # 8 of them rounds to 0) fails this.
    assert abs(dropped - rate) < 5 * np.sqrt(rate * (1 - rate) / out.size)
    np.testing.assert_allclose(out[out != 0], 1 / (1 - rate), rtol=1e-6)


def test_weight_drop_runs_the_lstm_with_a_dropconnected_recurrent_kernel() -> None:
    keras.utils.set_random_seed(8)
    model = build_model(11, embedding_dim=D, units=H)
    ids = _ids(11)
    rate, seed = 0.4, tf.constant([5, 6], tf.int32)
    forward = make_forward(model, Noise(weight_drop=rate))
    kernel = model.get_layer("rnn_0").cell.recurrent_kernel
    with tf.GradientTape() as tape:
        logits = forward(ids, training=True, seed=seed)
        total = tf.reduce_sum(tf.sin(logits))
    # Dropped entries of U get exactly no gradient: that is the mask, read back.
    kept = tape.gradient(total, kernel).numpy() != 0
    assert abs((1 - kept.mean()) - rate) < 0.05
    np.testing.assert_array_equal(forward(ids, training=True, seed=seed).numpy(), logits.numpy())
    assert not np.allclose(forward(ids, training=True, seed=seed + 1).numpy(), logits.numpy())
    plain = forward(ids, training=False, seed=seed).numpy()
    np.testing.assert_allclose(plain, model(ids).numpy(), rtol=1e-5, atol=1e-5)
    # The stock Keras model with U masked and scaled computes the same logits.
    kernel.assign(kernel.numpy() * kept / (1 - rate))
    np.testing.assert_allclose(logits.numpy(), model(ids).numpy(), rtol=1e-5, atol=1e-5)


def test_dropout_acts_between_layers_alike_on_both_paths() -> None:
    from textgen.training.forward import _fold, stateless_dropout

    keras.utils.set_random_seed(12)
    model = build_model(11, embedding_dim=D, units=H, num_layers=2)
    ids, rate, seed = _ids(11), 0.4, tf.constant([3, 9], tf.int32)
    noise = Noise(dropout=rate)
    fast = make_forward(model, noise)(ids, training=True, seed=seed).numpy()
    stock = make_forward(model, noise, stock=True)(ids, training=True, seed=seed).numpy()
    np.testing.assert_allclose(fast, stock, rtol=1e-5, atol=1e-5)
    # The same as Keras's layers with the masks put in by hand: after layer 0 from its own
    # seed, after layer 1 (the last) from the step's seed.
    x = model.get_layer("rnn_0")(model.get_layer("embedding")(ids))
    x = model.get_layer("rnn_1")(stateless_dropout(x, rate, _fold(seed, 3)))
    expected = model.get_layer("dense")(stateless_dropout(x, rate, seed)).numpy()
    np.testing.assert_allclose(fast, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("cell", ["lstm", "gru"])  # the fast path, and the Keras layers'
def test_embedding_dropout_drops_whole_characters(cell: str) -> None:
    keras.utils.set_random_seed(9)
    vocab = 40
    model = build_model(vocab, embedding_dim=D, units=H, cell=cell)
    ids = tf.constant(np.tile(np.arange(vocab, dtype=np.int32), (B, 1)))  # every character
    rate, seed = 0.3, tf.constant([7, 8], tf.int32)
    forward = make_forward(model, Noise(embedding_dropout=rate))
    table = model.get_layer("embedding").embeddings
    with tf.GradientTape() as tape:
        logits = forward(ids, training=True, seed=seed)
        total = tf.reduce_sum(tf.sin(logits))
    # A dropped character's row gets exactly no gradient, and a kept one's gets some.
    gradient = tf.convert_to_tensor(tape.gradient(total, table)).numpy()
    kept = np.any(gradient != 0, axis=1)
    assert 0.1 < 1 - kept.mean() < 0.5
    np.testing.assert_array_equal(forward(ids, training=True, seed=seed).numpy(), logits.numpy())
    assert not np.allclose(forward(ids, training=True, seed=seed + 1).numpy(), logits.numpy())
    # The stock Keras model with those rows zeroed and the rest scaled computes the same logits.
    table.assign(table.numpy() * kept[:, None] / (1 - rate))
    np.testing.assert_allclose(logits.numpy(), model(ids).numpy(), rtol=1e-5, atol=1e-5)


def test_forward_logits_in_tf_function_with_dynamic_shapes() -> None:
    keras.utils.set_random_seed(7)
    model = build_model(11, embedding_dim=D, units=H, num_layers=2)
    variables = model.trainable_variables

    @tf.function(input_signature=[tf.TensorSpec([None, None], tf.int32)])
    def run(ids):
        with tf.GradientTape() as tape:
            logits = forward_logits(model, ids, training=False)
            total = tf.reduce_sum(logits)
        return logits, tape.gradient(total, variables)

    rng = np.random.default_rng(9)
    for batch, steps in [(4, 3), (1, 1), (5, 8)]:
        ids = tf.constant(rng.integers(0, 11, size=(batch, steps)), tf.int32)
        logits, grads = run(ids)
        with tf.GradientTape() as tape:
            expected = model(ids)
            total = tf.reduce_sum(expected)
        _assert_all_close((logits,), (expected,), 1e-5)
        _assert_all_close(grads, tape.gradient(total, variables), 1e-4)


def test_adam_steps_match_stock_autodiff_with_dense_gradients() -> None:
    # Keras Adam treats an IndexedSlices embedding gradient with repeated ids differently from
    # the same gradient made dense (it sums squared slices), so the stock side is densified.
    keras.utils.set_random_seed(10)
    fast = build_model(11, embedding_dim=D, units=H, num_layers=2)
    stock = build_model(11, embedding_dim=D, units=H, num_layers=2)
    stock.set_weights(fast.get_weights())
    rng = np.random.default_rng(11)
    ids = tf.constant(rng.integers(0, 11, size=(4, 9)), tf.int32)
    targets = tf.constant(rng.integers(0, 11, size=(4, 9)), tf.int32)

    def make_step(model, logits_fn):
        optimizer = keras.optimizers.Adam(0.01)
        optimizer.build(model.trainable_variables)

        @tf.function
        def step():
            with tf.GradientTape() as tape:
                loss = tf.reduce_mean(
                    tf.nn.sparse_softmax_cross_entropy_with_logits(
                        labels=targets, logits=logits_fn(model)
                    )
                )
            variables = model.trainable_variables
            grads = [tf.convert_to_tensor(g) for g in tape.gradient(loss, variables)]
            optimizer.apply_gradients(zip(grads, variables, strict=True))
            return loss

        return step

    fast_step = make_step(fast, lambda m: forward_logits(m, ids, training=False))
    stock_step = make_step(stock, lambda m: m(ids))
    for _ in range(5):
        np.testing.assert_allclose(fast_step().numpy(), stock_step().numpy(), rtol=1e-5)
    _assert_all_close(fast.get_weights(), stock.get_weights(), 1e-4)


@pytest.mark.parametrize("cell", ["gru", "simple"])
def test_other_cells_run_through_their_keras_layers(cell: str) -> None:
    keras.utils.set_random_seed(12)
    model = build_model(11, embedding_dim=D, units=H, num_layers=2, cell=cell)
    ids = _ids(11)
    logits = forward_logits(model, ids, training=False)
    np.testing.assert_allclose(logits.numpy(), model(ids).numpy(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("cores", "chains"), [(1, 1), (2, 2), (8, 2)])
def test_one_chain_on_one_core(monkeypatch, cores: int, chains: int) -> None:
    import textgen.cores
    from textgen.training.step_plan import plan_for_this_machine

    monkeypatch.setattr(textgen.cores, "usable_cores", lambda: cores)
    assert plan_for_this_machine("float32").chains == chains


@pytest.mark.parametrize("backward", ["whole", "blocks"])
def test_the_backward_product_forms_agree_from_ids(backward: str) -> None:
    rng = np.random.default_rng(5)
    table = tf.constant(rng.normal(size=(9, D)))
    weights = [tf.constant(rng.normal(scale=0.5, size=s)) for s in ((D, 4 * H), (H, 4 * H))]
    weights.append(tf.constant(rng.normal(scale=0.5, size=4 * H)))
    ids = tf.constant(rng.integers(0, 9, size=(B, T)), tf.int32)

    def gradients(form):
        with tf.GradientTape() as tape:
            tape.watch([table, *weights])
            outputs, _ = lstm_sequence_from_ids(ids, table, *weights, backward=form)
            loss = tf.reduce_sum(tf.sin(outputs))
        return tape.gradient(loss, [table, *weights])

    _assert_all_close(
        gradients(backward), gradients("blocks" if backward == "whole" else "whole"), 1e-10
    )
    with pytest.raises(TextgenError, match="backward product must be one of"):
        gradients("diagonal")


@pytest.mark.parametrize("rows", [1, 7, B * T, 10 * B * T])
def test_chunked_weight_gradients_equal_one_product(rows: int) -> None:
    # Chunks that divide the depth, leave a remainder, cover it in one and overshoot it.
    rng = np.random.default_rng(6)
    table = tf.constant(rng.normal(size=(9, D)))
    inputs = tf.constant(rng.normal(size=(B, T, D)))
    weights = [tf.constant(rng.normal(scale=0.5, size=s)) for s in ((D, 4 * H), (H, 4 * H))]
    weights.append(tf.constant(rng.normal(scale=0.5, size=4 * H)))
    ids = tf.constant(rng.integers(0, 9, size=(B, T)), tf.int32)

    def gradients(chunk):
        with tf.GradientTape() as tape:
            tape.watch([table, inputs, *weights])
            from_ids, _ = lstm_sequence_from_ids(ids, table, *weights, gradient_rows=chunk)
            from_inputs, _ = lstm_sequence(inputs, *weights, gradient_rows=chunk)
            loss = tf.reduce_sum(tf.sin(from_ids)) + tf.reduce_sum(tf.cos(from_inputs))
        return tape.gradient(loss, [table, inputs, *weights])

    _assert_all_close(gradients(rows), gradients(0), 1e-10)
