"""The network: Embedding -> recurrent layers -> Dropout -> Dense, and its weights as plain arrays.

Weights travel between training, checkpoints and the sampler as a flat ``dict[str, np.ndarray]``
with stable names, so a checkpoint can be read without TensorFlow and written back into a stock
Keras model:

- ``embedding``: (vocab, embedding_dim)
- ``rnn_{i}/kernel``: (input_dim, gates * units), gate order as Keras (LSTM: i, f, c, o)
- ``rnn_{i}/recurrent_kernel``: (units, gates * units)
- ``rnn_{i}/bias``: (gates * units,), or (2, 3 * units) for GRU (Keras ``reset_after=True``)
- ``dense/kernel``: (units, vocab), ``dense/bias``: (vocab,)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from textgen.errors import TextgenError

if TYPE_CHECKING:
    import keras

CELLS = ("lstm", "gru", "simple")


def build_model(
    vocab_size: int,
    *,
    embedding_dim: int = 64,
    units: int = 512,
    num_layers: int = 1,
    dropout: float = 0.0,
    cell: str = "lstm",
) -> keras.Model:
    """Build the character model: int ids (batch, time) -> logits (batch, time, vocab_size)."""
    from textgen.backend import keras

    if cell not in CELLS:
        raise TextgenError(f"unknown cell {cell!r}; choose one of {', '.join(CELLS)}")
    if vocab_size < 2:
        raise TextgenError("the vocabulary needs at least 2 distinct characters")
    if min(embedding_dim, units, num_layers) < 1:
        raise TextgenError("embedding_dim, units and num_layers must be at least 1")
    if not 0.0 <= dropout < 1.0:
        raise TextgenError(f"dropout must be in [0, 1), got {dropout}")
    layer_class = {
        "lstm": keras.layers.LSTM,
        "gru": keras.layers.GRU,
        "simple": keras.layers.SimpleRNN,
    }
    ids = keras.Input(shape=(None,), dtype="int32", name="ids")
    x = keras.layers.Embedding(vocab_size, embedding_dim, name="embedding")(ids)
    for i in range(num_layers):
        x = layer_class[cell](units, return_sequences=True, name=f"rnn_{i}")(x)
    x = keras.layers.Dropout(dropout, name="dropout")(x)
    logits = keras.layers.Dense(vocab_size, name="dense")(x)  # (B, T, vocab)
    return keras.Model(ids, logits, name=f"textgen_{cell}")


def model_from_config(config: dict, weights: dict[str, np.ndarray] | None = None) -> keras.Model:
    """Rebuild a run's model from the ``model`` section of its config, optionally with weights."""
    model = build_model(
        config["vocab_size"],
        embedding_dim=config["embedding_dim"],
        units=config["units"],
        num_layers=config["num_layers"],
        dropout=config.get("dropout", 0.0),
        cell=config["cell"],
    )
    if weights is not None:
        set_weights(model, weights)
    return model


def _weight_names(model: keras.Model) -> list[tuple[str, object]]:
    """Pair each stable weight name with the Keras variable that holds it."""
    pairs = [("embedding", model.get_layer("embedding").embeddings)]
    i = 0
    while True:
        try:
            layer = model.get_layer(f"rnn_{i}")
        except ValueError:
            break
        cell = layer.cell
        pairs += [
            (f"rnn_{i}/kernel", cell.kernel),
            (f"rnn_{i}/recurrent_kernel", cell.recurrent_kernel),
            (f"rnn_{i}/bias", cell.bias),
        ]
        i += 1
    dense = model.get_layer("dense")
    pairs += [("dense/kernel", dense.kernel), ("dense/bias", dense.bias)]
    return pairs


def get_weights(model: keras.Model) -> dict[str, np.ndarray]:
    """Return the model's weights as a name -> float32 array dict (see the module docstring)."""
    return {name: np.asarray(var.numpy(), dtype=np.float32) for name, var in _weight_names(model)}


def set_weights(model: keras.Model, weights: dict[str, np.ndarray]) -> None:
    """Assign a name -> array dict (as from ``get_weights``) to the model, checking every shape."""
    pairs = _weight_names(model)
    missing = [name for name, _ in pairs if name not in weights]
    if missing:
        raise TextgenError(f"weights are missing {', '.join(missing)}")
    for name, var in pairs:
        value = np.asarray(weights[name])
        if tuple(value.shape) != tuple(var.shape):
            raise TextgenError(
                f"weight {name} has shape {value.shape}, the model expects {tuple(var.shape)}"
            )
        var.assign(value.astype(np.float32))
