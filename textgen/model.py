"""The Keras network: Embedding -> recurrent layers -> Dropout -> Dense, built and walked.

The weights' names and shapes belong to ``textgen.weights``; this module builds a network of a
``ModelConfig``'s shape, finds its layers (``rnn_0``, ``rnn_1``, ...) and moves the weights in
and out by those names. It imports TensorFlow only to build or walk a Keras model.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np

from textgen.cells import cell_of_layer, get_cell
from textgen.config import ModelConfig
from textgen.errors import TextgenError
from textgen.weights import RNN_PARTS, check_weights, rnn_name

if TYPE_CHECKING:
    from textgen.backend import keras


def build_model(config: ModelConfig | int, **shape) -> keras.Model:
    """Build the character model: int ids (batch, time) -> logits (batch, time, vocab_size).

    Takes a ``ModelConfig``, or a vocabulary size and ``ModelConfig``'s other fields as keywords
    (``build_model(65, units=256)``).
    """
    from textgen.backend import keras

    if not isinstance(config, ModelConfig):
        config = ModelConfig(config, **shape)
    if config.vocab_size is None:
        raise TextgenError("the model's vocabulary size is not set; see ModelConfig.for_vocab")
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
