"""The numpy stepping engine must reproduce Keras exactly."""

from __future__ import annotations

import numpy as np
import pytest

from textgen.errors import TextgenError
from textgen.sample.engine import RecurrentStack

VOCAB, EMB, UNITS = 7, 3, 5
CASES = [(cell, layers) for cell in ("lstm", "gru", "simple") for layers in (1, 2)]
TOL = {"rtol": 1e-5, "atol": 1e-5}


def random_weights(cell: str, layers: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Random weights (biases included, so every bias path is exercised) in get_weights form."""
    rng = np.random.default_rng(seed)
    gates = {"lstm": 4, "gru": 3, "simple": 1}[cell]

    def normal(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) * 0.7).astype(np.float32)

    weights = {"embedding": normal(VOCAB, EMB)}
    for i in range(layers):
        weights[f"rnn_{i}/kernel"] = normal(EMB if i == 0 else UNITS, gates * UNITS)
        weights[f"rnn_{i}/recurrent_kernel"] = normal(UNITS, gates * UNITS)
        weights[f"rnn_{i}/bias"] = normal(2, 3 * UNITS) if cell == "gru" else normal(gates * UNITS)
    weights["dense/kernel"] = normal(UNITS, VOCAB)
    weights["dense/bias"] = normal(VOCAB)
    return weights


def step_all(stack: RecurrentStack, ids: np.ndarray) -> np.ndarray:
    """Step over ids (batch, time) from the zero state; logits (batch, time, vocab)."""
    stack.reset(ids.shape[0])
    return np.stack([stack.step(ids[:, t]).copy() for t in range(ids.shape[1])], axis=1)


@pytest.fixture(scope="module")
def ids() -> np.ndarray:
    return np.random.default_rng(1).integers(0, VOCAB, size=(3, 11))


@pytest.mark.parametrize(("cell", "layers"), CASES)
def test_matches_full_keras_model(cell: str, layers: int, ids: np.ndarray) -> None:
    from textgen.model import build_model, set_weights

    weights = random_weights(cell, layers)
    model = build_model(VOCAB, embedding_dim=EMB, units=UNITS, num_layers=layers, cell=cell)
    set_weights(model, weights)
    expected = np.asarray(model(ids.astype(np.int32)))
    np.testing.assert_allclose(step_all(RecurrentStack(weights, cell), ids), expected, **TOL)


@pytest.mark.parametrize(("cell", "layers"), CASES)
def test_matches_keras_cells_stepped(cell: str, layers: int, ids: np.ndarray) -> None:
    import keras

    weights = random_weights(cell, layers)
    cell_class = {
        "lstm": keras.layers.LSTMCell,
        "gru": keras.layers.GRUCell,
        "simple": keras.layers.SimpleRNNCell,
    }[cell]
    cells = []
    for i in range(layers):
        keras_cell = cell_class(UNITS)
        keras_cell.build((None, EMB if i == 0 else UNITS))
        keras_cell.kernel.assign(weights[f"rnn_{i}/kernel"])
        keras_cell.recurrent_kernel.assign(weights[f"rnn_{i}/recurrent_kernel"])
        keras_cell.bias.assign(weights[f"rnn_{i}/bias"])
        cells.append(keras_cell)
    batch = ids.shape[0]
    zeros = np.zeros((batch, UNITS), np.float32)
    states = [[zeros, zeros] if cell == "lstm" else [zeros] for _ in range(layers)]
    expected = []
    for t in range(ids.shape[1]):
        x = weights["embedding"][ids[:, t]]
        for i, keras_cell in enumerate(cells):
            x, states[i] = keras_cell(x, states[i])
        expected.append(np.asarray(x) @ weights["dense/kernel"] + weights["dense/bias"])
    expected = np.stack(expected, axis=1)
    np.testing.assert_allclose(step_all(RecurrentStack(weights, cell), ids), expected, **TOL)


@pytest.mark.parametrize(("cell", "layers"), CASES)
def test_batch_equals_streams_alone(cell: str, layers: int, ids: np.ndarray) -> None:
    stack = RecurrentStack(random_weights(cell, layers), cell)
    together = step_all(stack, ids)
    for row in range(ids.shape[0]):
        np.testing.assert_allclose(step_all(stack, ids[row : row + 1])[0], together[row], **TOL)


@pytest.mark.parametrize(("cell", "layers"), CASES)
def test_reset_zeroes_state(cell: str, layers: int, ids: np.ndarray) -> None:
    stack = RecurrentStack(random_weights(cell, layers), cell)
    stack.reset(ids.shape[0])
    fresh = stack.step(ids[:, 0]).copy()
    stack.feed(ids)
    assert np.abs(stack.state).max() > 0
    stack.reset(ids.shape[0])
    assert not stack.state.any()
    np.testing.assert_array_equal(stack.step(ids[:, 0]), fresh)


@pytest.mark.parametrize("cell", ["lstm", "gru", "simple"])
def test_state_roundtrip_and_fork(cell: str, ids: np.ndarray) -> None:
    stack = RecurrentStack(random_weights(cell, 2), cell)
    stack.reset(1)
    stack.feed(ids[:1, :5])
    primed = stack.state
    assert primed.shape == (2, 2 if cell == "lstm" else 1, 1, UNITS)
    follow = stack.step(ids[0, 5:6]).copy()
    stack.state = np.repeat(primed, 4, axis=2)
    assert stack.batch_size == 4
    forked = stack.step(np.repeat(ids[0, 5], 4))
    np.testing.assert_allclose(forked, np.repeat(follow, 4, axis=0), **TOL)
    returned = stack.state
    returned[:] = 0  # a copy: editing it leaves the stack alone
    assert stack.state.any()


def test_feed_equals_steps(ids: np.ndarray) -> None:
    stack = RecurrentStack(random_weights("lstm", 2), "lstm")
    stepped = step_all(stack, ids)[:, -1]
    stack.reset(ids.shape[0])
    np.testing.assert_array_equal(stack.feed(ids), stepped)


def test_step_returns_reused_float32_buffer(ids: np.ndarray) -> None:
    stack = RecurrentStack(random_weights("gru", 1), "gru")
    stack.reset(ids.shape[0])
    first = stack.step(ids[:, 0])
    assert first.dtype == np.float32 and first.shape == (ids.shape[0], VOCAB)
    assert stack.step(ids[:, 1]) is first


def test_rejects_bad_weights_and_inputs(ids: np.ndarray) -> None:
    weights = random_weights("lstm", 1)
    with pytest.raises(TextgenError, match="unknown cell"):
        RecurrentStack(weights, "transformer")
    with pytest.raises(TextgenError, match="shape"):
        RecurrentStack(weights, "gru")
    with pytest.raises(TextgenError, match="missing dense/bias"):
        RecurrentStack({k: v for k, v in weights.items() if k != "dense/bias"}, "lstm")
    stack = RecurrentStack(weights, "lstm")
    with pytest.raises(ValueError, match="must lie in"):
        stack.feed(np.array([[VOCAB]]))
    with pytest.raises(ValueError, match="shape"):
        stack.feed(ids)  # batch 3 ids into a batch-1 stack
    with pytest.raises(ValueError, match="shape"):
        stack.state = np.zeros((1, 1, 1, UNITS))


# -- sampling -------------------------------------------------------------------------------
