"""The recurrent cells textgen knows: one row per cell, read by every part that handles a cell.

A row says what every backend needs to know of its cell: the Keras classes that train it, the
gate blocks of its kernels, its states and how its bias is laid out, and whether training has a
fast path for it. Each backend (the numpy engine, the SavedModel and ONNX graphs, the web page)
keeps its step equations in a table by cell name and reads it through :meth:`Cell.equations`, so
a cell that a backend cannot step is refused there, never stepped with another cell's equations.

Imports neither numpy nor TensorFlow, so the command line can offer the names for free.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TypeVar

from textgen.errors import TextgenError

T = TypeVar("T")


@dataclass(frozen=True)
class Cell:
    """What textgen needs to know about one kind of recurrent cell.

    Attributes:
        name: the name users give (``--cell``).
        layer: the Keras layer class name (``keras.layers.<layer>``).
        cell: the Keras single-step cell class name (``keras.layers.<cell>``).
        gates: blocks of ``units`` columns in the kernels (LSTM: i, f, c, o).
        states: its state tensors per layer, in Keras's order (LSTM: h and c).
        bias_rows: rows of its bias; Keras's GRU (``reset_after=True``) keeps the input and the
            recurrent biases apart, in two.
        fast_path: training steps it with ``textgen.training.fast_lstm``'s hand-written gradient.
    """

    name: str
    layer: str
    cell: str
    gates: int
    states: tuple[str, ...] = ("h",)
    bias_rows: int = 1
    fast_path: bool = False

    @property
    def state_size(self) -> int:
        """State tensors per layer."""
        return len(self.states)

    def bias_shape(self, units: int) -> tuple[int, ...]:
        """Shape of the layer's bias: ``(gates * units,)``, or one such row per bias row."""
        width = self.gates * units
        return (width,) if self.bias_rows == 1 else (self.bias_rows, width)

    def equations(self, table: Mapping[str, T], backend: str) -> T:
        """This cell's entry in a backend's table of step equations.

        Raises:
            TextgenError: the backend has no equations for this cell.
        """
        try:
            return table[self.name]
        except KeyError:
            raise TextgenError(f"{backend} cannot step the {self.name} cell") from None

    def layer_class(self):
        """The Keras layer class (imports TensorFlow)."""
        from textgen.backend import keras

        return getattr(keras.layers, self.layer)

    def cell_class(self):
        """The Keras single-step cell class (imports TensorFlow)."""
        from textgen.backend import keras

        return getattr(keras.layers, self.cell)


CELLS: dict[str, Cell] = {
    "lstm": Cell("lstm", "LSTM", "LSTMCell", gates=4, states=("h", "c"), fast_path=True),
    "gru": Cell("gru", "GRU", "GRUCell", gates=3, bias_rows=2),
    "simple": Cell("simple", "SimpleRNN", "SimpleRNNCell", gates=1),
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
