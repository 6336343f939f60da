"""The network's weights as plain arrays: their names, their shapes, and the one check.

Weights travel between training, checkpoints, the sampler and the exports as a flat
``dict[str, np.ndarray]`` with stable names, so a checkpoint can be read without TensorFlow and
written back into a stock Keras model:

- ``embedding``: (vocab, embedding_dim)
- ``rnn_{i}/kernel``: (input_dim, gates * units), gate order as Keras (LSTM: i, f, c, o)
- ``rnn_{i}/recurrent_kernel``: (units, gates * units)
- ``rnn_{i}/bias``: (gates * units,), or (2, 3 * units) for GRU (Keras ``reset_after=True``)
- ``dense/kernel``: (units, vocab), ``dense/bias``: (vocab,)

This module is the one place that knows these names and shapes; it needs numpy only, never
TensorFlow (``textgen.model`` walks a Keras model by them).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from textgen.cells import get_cell
from textgen.config import ModelConfig
from textgen.errors import CheckpointError, TextgenError

RNN_PARTS = ("kernel", "recurrent_kernel", "bias")
"""A recurrent layer's arrays, in the order Keras's cells hold them."""


def rnn_name(i: int) -> str:
    """The name of recurrent layer ``i``, in the model and in the weight dict."""
    return f"rnn_{i}"


def weight_names(num_layers: int) -> list[str]:
    """The name of every weight of a network of ``num_layers`` recurrent layers, in order."""
    layers = [f"{rnn_name(i)}/{part}" for i in range(num_layers) for part in RNN_PARTS]
    return ["embedding", *layers, "dense/kernel", "dense/bias"]


def layer_arrays(weights: Mapping[str, np.ndarray], i: int) -> list[np.ndarray]:
    """Recurrent layer ``i``'s kernel, recurrent kernel and bias, in that order."""
    return [weights[f"{rnn_name(i)}/{part}"] for part in RNN_PARTS]


def num_layers_in(weights: Mapping[str, np.ndarray]) -> int:
    """How many recurrent layers a weight dict holds (consecutive ``rnn_{i}/kernel`` entries)."""
    count = 0
    while f"{rnn_name(count)}/kernel" in weights:
        count += 1
    return count


def shape_of(weights: Mapping[str, np.ndarray], cell: str) -> ModelConfig:
    """The shape a weight dict describes for ``cell``, read from its arrays (not yet checked)."""
    try:
        vocab, embedding_dim = np.shape(weights["embedding"])
        units = np.shape(weights[f"{rnn_name(0)}/recurrent_kernel"])[0]
    except (KeyError, ValueError, IndexError) as err:
        raise TextgenError(f"the weights are not a textgen network ({err})") from None
    return ModelConfig(vocab, embedding_dim, units, num_layers_in(weights), cell)


def weight_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """The name and shape of every weight of a network of this shape, in layer order."""
    cell = get_cell(config.cell)
    width = cell.gates * config.units
    shapes = {"embedding": (config.vocab_size, config.embedding_dim)}
    for i in range(config.num_layers):
        below = config.embedding_dim if i == 0 else config.units
        shapes[f"{rnn_name(i)}/kernel"] = (below, width)
        shapes[f"{rnn_name(i)}/recurrent_kernel"] = (config.units, width)
        shapes[f"{rnn_name(i)}/bias"] = cell.bias_shape(config.units)
    shapes["dense/kernel"] = (config.units, config.vocab_size)
    shapes["dense/bias"] = (config.vocab_size,)
    return shapes


def check_weights(
    weights: Mapping[str, np.ndarray], config: ModelConfig, vocab_size: int | None = None
) -> None:
    """Check that ``weights`` holds exactly the arrays ``config`` describes, and, given the
    tokenizer's ``vocab_size``, that the model reads and predicts that many ids.

    Raises:
        TextgenError: a weight is missing, extra or shaped otherwise.
        CheckpointError: the vocabulary does not fit the model.
    """
    shapes = weight_shapes(config)
    missing = [name for name in shapes if name not in weights]
    if missing:
        raise TextgenError(f"the weights are missing {', '.join(missing)}")
    if num_layers_in(weights) != config.num_layers:
        raise TextgenError(
            f"the weights hold {num_layers_in(weights)} recurrent layers, not {config.num_layers}"
        )
    for name, shape in shapes.items():
        got = tuple(np.shape(weights[name]))
        if got != shape:
            raise TextgenError(
                f"weight {name} has shape {got}, expected {shape} for a {config.num_layers}-layer "
                f"{config.cell} network with vocabulary {config.vocab_size}, embedding "
                f"{config.embedding_dim} and {config.units} units"
            )
    if vocab_size is not None and vocab_size != config.vocab_size:
        raise CheckpointError(
            f"the tokenizer has {vocab_size} ids but the model {config.vocab_size} outputs"
        )
