"""The network: Embedding -> recurrent layers -> Dropout -> Dense, and its weights as plain arrays.

Weights travel between training, checkpoints and the sampler as a flat ``dict[str, np.ndarray]``
with stable names, so a checkpoint can be read without TensorFlow and written back into a stock
Keras model:

- ``embedding``: (vocab, embedding_dim)
- ``rnn_{i}/kernel``: (input_dim, gates * units), gate order as Keras (LSTM: i, f, c, o)
- ``rnn_{i}/recurrent_kernel``: (units, gates * units)
- ``rnn_{i}/bias``: (gates * units,), or (2, 3 * units) for GRU (Keras ``reset_after=True``)
- ``dense/kernel``: (units, vocab), ``dense/bias``: (vocab,)

This module is the one place that knows these names and shapes and the layer names
``rnn_0``, ``rnn_1``, ...; it imports TensorFlow only to build or walk a Keras model.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np

from textgen.cells import cell_of_layer, get_cell
from textgen.config import ModelConfig
from textgen.errors import TextgenError

if TYPE_CHECKING:
    from textgen.backend import keras

RNN_PARTS = ("kernel", "recurrent_kernel", "bias")


def rnn_name(i: int) -> str:
    """The name of recurrent layer ``i``, in the model and in the weight dict."""
    return f"rnn_{i}"


def build_model(config: ModelConfig | int, **shape) -> keras.Model:
    """Build the character model: int ids (batch, time) -> logits (batch, time, vocab_size).

    Takes a ``ModelConfig``, or a vocabulary size and ``ModelConfig``'s other fields as keywords
    (``build_model(65, units=256)``).
    """
    from textgen.backend import keras

    if not isinstance(config, ModelConfig):
        config = ModelConfig(config, **shape)
    layer_class = get_cell(config.cell).layer_class()
    ids = keras.Input(shape=(None,), dtype="int32", name="ids")
    x = keras.layers.Embedding(config.vocab_size, config.embedding_dim, name="embedding")(ids)
    for i in range(config.num_layers):
        x = layer_class(config.units, return_sequences=True, name=rnn_name(i))(x)
    x = keras.layers.Dropout(config.dropout, name="dropout")(x)
    logits = keras.layers.Dense(config.vocab_size, name="dense")(x)  # (B, T, vocab)
    return keras.Model(ids, logits, name=f"textgen_{config.cell}")


def recurrent_layers(model: keras.Model) -> list:
    """The model's recurrent layers, ``rnn_0``, ``rnn_1``, ..., in order."""
    names = {layer.name for layer in model.layers}
    layers = []
    while rnn_name(len(layers)) in names:
        layers.append(model.get_layer(rnn_name(len(layers))))
    if not layers:
        raise TextgenError("the model has no recurrent layers named rnn_0, rnn_1, ...")
    return layers


def config_of(model: keras.Model) -> ModelConfig:
    """Read a ``build_model`` network's shape back from its layers."""
    layers = recurrent_layers(model)
    embedding = model.get_layer("embedding")
    return ModelConfig(
        vocab_size=int(embedding.input_dim),
        embedding_dim=int(embedding.output_dim),
        units=int(layers[0].cell.units),
        num_layers=len(layers),
        cell=cell_of_layer(layers[0]).name,
        dropout=float(model.get_layer("dropout").rate),
    )


def num_layers_in(weights: Mapping[str, np.ndarray]) -> int:
    """How many recurrent layers a weight dict holds (consecutive ``rnn_{i}/kernel`` entries)."""
    count = 0
    while f"{rnn_name(count)}/kernel" in weights:
        count += 1
    return count


def config_from_weights(weights: Mapping[str, np.ndarray], cell: str) -> ModelConfig:
    """The shape a weight dict describes for ``cell``, checked with ``check_weights``."""
    try:
        vocab, embedding_dim = np.shape(weights["embedding"])
        units = np.shape(weights[f"{rnn_name(0)}/recurrent_kernel"])[0]
    except (KeyError, ValueError) as err:
        raise TextgenError(f"the weights are not a textgen network ({err})") from None
    config = ModelConfig(vocab, embedding_dim, units, num_layers_in(weights), cell)
    check_weights(weights, config)
    return config


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


def check_weights(weights: Mapping[str, np.ndarray], config: ModelConfig) -> None:
    """Raise TextgenError unless ``weights`` holds exactly the arrays ``config`` describes."""
    shapes = weight_shapes(config)
    missing = [name for name in shapes if name not in weights]
    if missing:
        raise TextgenError(f"the weights are missing {', '.join(missing)}")
    extra = num_layers_in(weights) - config.num_layers
    if extra:
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


def named_variables(model: keras.Model) -> dict[str, object]:
    """Each stable weight name with the Keras variable that holds it."""
    found = {"embedding": model.get_layer("embedding").embeddings}
    for i, layer in enumerate(recurrent_layers(model)):
        for part in RNN_PARTS:
            found[f"{rnn_name(i)}/{part}"] = getattr(layer.cell, part)
    dense = model.get_layer("dense")
    found["dense/kernel"], found["dense/bias"] = dense.kernel, dense.bias
    return found


def get_weights(model: keras.Model) -> dict[str, np.ndarray]:
    """Return the model's weights as a name -> float32 array dict (see the module docstring)."""
    return {
        name: np.asarray(var.numpy(), np.float32) for name, var in named_variables(model).items()
    }


def set_weights(model: keras.Model, weights: Mapping[str, np.ndarray]) -> None:
    """Assign a name -> array dict (as from ``get_weights``) to the model, checking every shape."""
    check_weights(weights, config_of(model))
    for name, var in named_variables(model).items():
        var.assign(np.asarray(weights[name], np.float32))


def model_from_config(config: ModelConfig, weights: Mapping[str, np.ndarray] | None = None):
    """Build a network of this shape, optionally with weights."""
    model = build_model(config)
    if weights is not None:
        set_weights(model, weights)
    return model
