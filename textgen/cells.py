"""The recurrent cells textgen knows: one row per cell, read by every part that handles a cell.

Imports neither numpy nor TensorFlow, so the command line can offer the names for free.
"""

from __future__ import annotations

from dataclasses import dataclass

from textgen.errors import TextgenError


@dataclass(frozen=True)
class Cell:
    """What textgen needs to know about one kind of recurrent cell.

    Attributes:
        name: the name users give (``--cell``).
        layer: the Keras layer class name (``keras.layers.<layer>``).
        cell: the Keras single-step cell class name (``keras.layers.<cell>``).
        gates: blocks of ``units`` columns in the kernels (LSTM: i, f, c, o).
        state_size: state tensors per layer (LSTM: h and c).
    """

    name: str
    layer: str
    cell: str
    gates: int
    state_size: int

    def bias_shape(self, units: int) -> tuple[int, ...]:
        """Shape of the layer's bias; Keras's GRU (``reset_after=True``) keeps two rows."""
        if self.name == "gru":
            return (2, 3 * units)
        return (self.gates * units,)

    def layer_class(self):
        """The Keras layer class (imports TensorFlow)."""
        from textgen.backend import keras

        return getattr(keras.layers, self.layer)

    def cell_class(self):
        """The Keras single-step cell class (imports TensorFlow)."""
        from textgen.backend import keras

        return getattr(keras.layers, self.cell)


CELLS: dict[str, Cell] = {
    "lstm": Cell("lstm", "LSTM", "LSTMCell", gates=4, state_size=2),
    "gru": Cell("gru", "GRU", "GRUCell", gates=3, state_size=1),
    "simple": Cell("simple", "SimpleRNN", "SimpleRNNCell", gates=1, state_size=1),
}


def get_cell(name: str) -> Cell:
    """The cell called ``name``; an unknown name is a TextgenError listing the known ones."""
    try:
        return CELLS[name]
    except KeyError:
        raise TextgenError(f"unknown cell {name!r}; choose one of {', '.join(CELLS)}") from None


def cell_of_layer(layer) -> Cell:
    """The cell of a Keras recurrent layer, by its class."""
    for cell in CELLS.values():
        if type(layer).__name__ == cell.layer:
            return cell
    raise TextgenError(f"{layer.name} is not a recurrent layer textgen knows")
