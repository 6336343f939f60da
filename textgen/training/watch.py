"""Watching a run as it trains: a sample after each epoch, and TensorBoard event files.

Both are ``textgen.training.train.Callback`` objects that ``train()`` adds unless told not to
(``--sample-every 0``, ``--no-tensorboard``).

TensorBoard gets, against the global step: ``train/loss`` and ``train/bpc`` (the mean over the
steps since the last point), ``train/learning_rate``, ``train/chars_per_second`` and
``train/grad_norm`` every ``LOG_EVERY`` steps; ``epoch/train_loss``, ``validation/loss`` and
``validation/bpc`` at the end of each epoch; and the epoch's sample as text (``samples``).

A resumed run replays, from its last checkpoint, steps it may already have logged before a
crash. Exact resume makes the replayed values the same, so the logger skips every step up to the
last one already in the event files: no step is written twice and each series keeps rising,
which TensorBoard needs to draw it.
"""

from __future__ import annotations

import time
from pathlib import Path

from textgen.config import TrainState
from textgen.training.callbacks import Callback, EpochEnd
from textgen.training.evaluation import LN2

LOG_EVERY = 20  # steps between training points
SAMPLE_LENGTH = 200
SAMPLE_TEMPERATURE = 0.8


class EpochSample(Callback):
    """After every ``every`` epochs, a short sample from the current weights, printed.

    The seed is fixed (the run's own), so samples of successive epochs differ only by what the
    model learnt. The numpy engine draws it: a fraction of a second for 200 characters.
    """

    def __init__(self, tokenizer, cell: str, seed: int, every: int = 1, echo=print) -> None:
        self.tokenizer, self.cell, self.seed, self.every, self.echo = (
            tokenizer,
            cell,
            seed,
            every,
            echo,
        )
        self.text: str | None = None  # the newest sample, for other callbacks to log

    def on_epoch_end(self, state: TrainState, epoch: EpochEnd) -> None:
        self.text = None
        if self.every < 1 or state.batch or state.epoch % self.every:
            return  # only after whole epochs
        from textgen.model import get_weights
        from textgen.sample.sampler import Sampler

        sampler = Sampler(get_weights(self.trainer.model), self.tokenizer, cell=self.cell)
        self.text = sampler.generate(SAMPLE_LENGTH, temperature=SAMPLE_TEMPERATURE, seed=self.seed)
        self.echo(f"sample after epoch {state.epoch}:\n{self.text}\n")


def last_logged_step(log_dir: Path) -> int:
    """The highest step in the event files under ``log_dir`` (-1 when there are none)."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    last = -1
    for path in sorted(Path(log_dir).glob("events.out.tfevents.*")):
        # The loader stops at a record cut off by a crash, as TensorBoard itself does.
        for event in EventFileLoader(str(path)).Load():
            if event.summary.value:
                last = max(last, int(event.step))
    return last


class TensorBoardLogger(Callback):
    """Writes the run's scalars and samples as TensorBoard event files under ``log_dir``.

    Args:
        log_dir: where the event files go (``RUN/tensorboard``).
        chars_per_step: characters in one batch (batch size x sequence length).
        sample: the EpochSample whose text to log, if any.
    """

    def __init__(self, log_dir: Path, chars_per_step: int, sample: EpochSample | None = None):
        self.log_dir = Path(log_dir)
        self.chars_per_step = chars_per_step
        self.sample = sample
        self.writer = None

    def on_train_begin(self, state: TrainState) -> None:
        from textgen.backend import tf

        self.tf = tf
        self.skip_to = last_logged_step(self.log_dir)
        self.writer = tf.summary.create_file_writer(str(self.log_dir))
        self._mark(state)

    def _mark(self, state: TrainState) -> None:
        self._since = time.monotonic()
        self._from_step = state.step
        self._loss_sum = 0.0

    def _scalars(self, step: int, values: dict[str, float]) -> None:
        if step <= self.skip_to:
            return
        with self.writer.as_default(step=step):
            for tag, value in values.items():
                self.tf.summary.scalar(tag, value)

    def on_batch_end(self, state: TrainState, loss: float) -> None:
        self._loss_sum += loss
        if state.step % LOG_EVERY:
            return
        steps = state.step - self._from_step
        seconds = max(time.monotonic() - self._since, 1e-9)
        mean = self._loss_sum / max(steps, 1)
        trainer = self.trainer
        self._scalars(
            state.step,
            {
                "train/loss": mean,
                "train/bpc": mean / LN2,
                "train/learning_rate": float(trainer.optimizer.learning_rate.numpy()),
                "train/chars_per_second": steps * self.chars_per_step / seconds,
                "train/grad_norm": float(trainer.grad_norm.numpy()),
            },
        )
        self._mark(state)

    def on_epoch_end(self, state: TrainState, epoch: EpochEnd) -> None:
        values = {}
        if epoch.train_loss is not None:
            values["epoch/train_loss"] = epoch.train_loss
        if epoch.val_loss is not None:
            values["validation/loss"] = epoch.val_loss
            values["validation/bpc"] = epoch.val_loss / LN2
        self._scalars(state.step, values)
        text = self.sample.text if self.sample is not None else None
        if text is not None and state.step > self.skip_to:
            with self.writer.as_default(step=state.step):
                self.tf.summary.text("samples", text)
        self.writer.flush()
        self._mark(state)

    def on_train_end(self, state: TrainState) -> None:
        if self.writer is not None:
            self.writer.close()
