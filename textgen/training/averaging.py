"""An exponential moving average of the weights, for validation and ``best.npz``.

Adam at a high learning rate leaves the weights jittering around a good point; the average of
the recent steps sits nearer to it, so it validates better than the weights of any one step and
is what ``best.npz`` keeps. Training itself always steps the raw weights.

The average is kept in numpy, beside the model rather than in it, so that it works the same for
any Keras variables (mirrored ones included) and costs a copy and two passes over the weights
per step (about 1% of a 1 x 512 LSTM step). Early on the decay is capped at
``(1 + step) / (10 + step)``, so that the average does not remember the random initial weights
for thousands of steps.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence

import numpy as np

__all__ = ["WeightAverage"]


class WeightAverage:
    """The moving average of ``variables`` (Keras variables, in a fixed order) with ``decay``.

    Args:
        variables: the trainable variables to average.
        names: their stable names (the keys a checkpoint stores them under).
        decay: how much of the average each step keeps, in (0, 1).
    """

    def __init__(self, variables: Sequence, names: Sequence[str], decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"decay must lie in (0, 1), got {decay}")
        self.variables, self.names, self.decay = list(variables), list(names), decay
        self.shadow = [np.array(v.numpy(), np.float32) for v in self.variables]

    def update(self, step: int) -> None:
        """Fold in the current weights after training step ``step`` (counted from 1)."""
        keep = min(self.decay, (1.0 + step) / (10.0 + step))
        for shadow, variable in zip(self.shadow, self.variables, strict=True):
            shadow *= keep
            shadow += (1.0 - keep) * variable.numpy()

    @contextlib.contextmanager
    def applied(self) -> Iterator[None]:
        """Within the block the variables hold the average; afterwards their own values again."""
        raw = [np.array(v.numpy()) for v in self.variables]
        for variable, shadow in zip(self.variables, self.shadow, strict=True):
            variable.assign(shadow)
        try:
            yield
        finally:
            for variable, value in zip(self.variables, raw, strict=True):
                variable.assign(value)

    def arrays(self) -> dict[str, np.ndarray]:
        """The average by name, for a checkpoint."""
        return {name: shadow.copy() for name, shadow in zip(self.names, self.shadow, strict=True)}

    def load(self, arrays: Mapping[str, np.ndarray]) -> None:
        """Take the average back from a checkpoint's arrays (missing names keep the weights)."""
        for i, name in enumerate(self.names):
            if name in arrays:
                self.shadow[i] = np.array(arrays[name], np.float32)
