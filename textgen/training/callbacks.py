"""The training loop's hooks: what a callback is told, and when.

``textgen.training.trainer`` calls these; ``EarlyStopping`` below, ``textgen.training.watch``
(samples, TensorBoard) and user code implement them.
"""

from __future__ import annotations

from dataclasses import dataclass

from textgen.config import TrainState


@dataclass(frozen=True)
class EpochEnd:
    """What ``on_epoch_end`` is told: the (possibly partial) epoch's losses, in nats."""

    epoch: float  # epochs done, fractional when a budget ended the epoch early
    train_loss: float | None
    val_loss: float | None
    improved: bool
    learning_rate: float


class Callback:
    """Observes training; subclass and override what you need.

    A callback may end training by returning a reason string (for example ``"early_stopping"``)
    from ``on_batch_end`` or ``on_epoch_end``; the loop saves a checkpoint and stops with that
    reason. ``trainer`` is set to the running ``textgen.training.trainer.Trainer`` before
    ``on_train_begin`` (its ``model``, ``optimizer``, ``config`` and ``grad_norm``).
    """

    trainer = None

    def on_train_begin(self, state: TrainState) -> None:
        """When the loop starts, after the model is built and any checkpoint restored."""

    def on_batch_end(self, state: TrainState, loss: float) -> str | None:
        """After each training batch (``state.step`` counts it already)."""
        return None

    def on_epoch_end(self, state: TrainState, epoch: EpochEnd) -> str | None:
        """After each epoch's validation, history row and checkpoint."""
        return None

    def on_train_end(self, state: TrainState) -> None:
        """When the loop ends, however it ends (also on an error)."""


class EarlyStopping(Callback):
    """Stops training once ``patience`` whole epochs in a row have not improved the best loss.

    The count is the loop's (``TrainState.epochs_without_improvement``, kept in every
    checkpoint), so a resumed run goes on counting where it stopped.
    """

    def __init__(self, patience: int) -> None:
        self.patience = patience

    def on_epoch_end(self, state: TrainState, epoch: EpochEnd) -> str | None:
        if state.epochs_without_improvement >= self.patience:
            return "early_stopping"
        return None
