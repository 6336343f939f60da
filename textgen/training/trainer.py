"""The training loop of one invocation: batches, stop conditions, callbacks, checkpoints.

The loop is written out (rather than ``model.fit``) because resuming must be exact: the order
of windows depends only on (seed, epoch), dropout masks only on (seed, step), and a checkpoint
records the epoch, the batch inside it and the optimizer state, so a run stopped at any point
and resumed ends with the same weights as one that never stopped.

The loop is flat: each turn either ends an epoch or trains one batch, after asking the stop
conditions (``STOPS``: epochs, budget, interrupt, and a callback's reason, such as
``EarlyStopping``'s). Callbacks observe it, and may stop it, through ``on_batch_end`` and
``on_epoch_end``; that is where logging and other features plug in without touching the loop.

It runs the same on one process and on a cluster (``textgen.training.distribute``): the cluster says
which rows of a batch this process computes, sums and broadcasts, and whether this process
writes the run directory (``is_chief``).
"""

from __future__ import annotations

import contextlib
import json
import math
import signal
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from textgen import run as rundir
from textgen.checkpoint import Checkpoint, save_checkpoint
from textgen.config import TrainConfig, TrainState
from textgen.errors import CheckpointError, TextgenError
from textgen.model import get_weights, named_variables, set_weights
from textgen.training.averaging import WeightAverage
from textgen.training.callbacks import Callback, EpochEnd
from textgen.training.distribute import LOCAL
from textgen.training.evaluation import LN2, build_eval_step, describe_loss, evaluate_ids
from textgen.training.step_plan import StepPlan, plan_for_this_machine
from textgen.training.steps import VOTES, make_optimizer, make_steps
from textgen.training.windows import epoch_starts, steps_per_epoch

HISTORY_FIELDS = [
    "epoch",
    "step",
    "train_loss",
    "train_bpc",
    "val_loss",
    "val_bpc",
    "learning_rate",
    "seconds",
]
STOPS = ("completed", "early_stopping", "max_time", "interrupted")


@dataclass
class TrainResult:
    """What a training call achieved."""

    run_dir: Path
    epochs_done: float
    best_val_loss: float | None
    stopped: str  # one of STOPS, or the reason a callback gave
    plan: StepPlan = field(default_factory=StepPlan)  # how the step ran on this machine

    @property
    def precision(self) -> str:
        """The large products' arithmetic, as ``auto`` resolved it."""
        return self.plan.precision


class TrainingInterrupted(TextgenError):
    """Ctrl-C stopped training; a checkpoint was saved first."""

    interrupted = True  # the command line exits with 130 for this

    def __init__(self, run_dir: Path) -> None:
        super().__init__(f"interrupted; checkpoint saved in {run_dir} (continue with --resume)")
        self.run_dir = run_dir


# Where the cosine schedule ends, as a share of the peak rate: a run without the weight average
# keeps its raw weights, so their rate falls, but not so far that learning stalls (in equal
# epochs, with the average, a floor of 0.5 ended 0.011-0.014 nats below 0.1; docs/speed.md).
COSINE_FLOOR = 0.5


def schedule_of(config: TrainConfig) -> str:
    """The schedule a run follows: ``"auto"`` is ``"constant"`` while the weight average is on
    and ``"cosine"`` without it.

    The average is what validation scores and best.npz keeps, and it already does what a
    decaying rate is for, smoothing out the steps' noise; with it, every step of decay measured
    cost quality (docs/speed.md, "Quality in a time budget": no decay beat a cosine to half the
    peak by 0.004-0.008 nats in equal epochs, at 11, 16 and 22 epochs).
    """
    if config.lr_schedule != "auto":
        return config.lr_schedule
    return "constant" if config.weight_average else "cosine"


def learning_rate_at(config: TrainConfig, progress: float) -> float:
    """The learning rate at a fraction ``progress`` in [0, 1] of the run."""
    if schedule_of(config) == "constant":
        return config.learning_rate
    cosine = 0.5 * (1.0 + math.cos(math.pi * min(max(progress, 0.0), 1.0)))
    return config.learning_rate * (COSINE_FLOOR + (1.0 - COSINE_FLOOR) * cosine)


@contextlib.contextmanager
def _graceful_interrupts() -> Iterator[dict]:
    """Turn the first Ctrl-C into a flag the loop checks; a second one aborts at once."""
    flag = {"stop": False}

    def handler(signum, frame):
        if flag["stop"]:
            raise KeyboardInterrupt
        flag["stop"] = True

    try:
        previous = signal.signal(signal.SIGINT, handler)
    except ValueError:  # not the main thread: leave signals alone
        yield flag
        return
    try:
        yield flag
    finally:
        signal.signal(signal.SIGINT, previous)


@dataclass
class _Clock:
    """This invocation's wall clock, for the budget, the schedule and mid-epoch checkpoints."""

    started: float = field(default_factory=time.monotonic)
    seconds_before: float = 0.0  # training time of earlier invocations
    last_save: float = field(default_factory=time.monotonic)

    def elapsed(self) -> float:
        return time.monotonic() - self.started


class Trainer:
    """One training invocation: the model, its optimizer, the loop state and the callbacks."""

    def __init__(
        self,
        model,
        config: TrainConfig,
        split,
        run_dir: Path,
        *,
        cluster=LOCAL,
        path: str = "fast",
        callbacks: Sequence[Callback] = (),
        echo: Callable[[str], None] = print,
        progress: bool = False,
    ) -> None:
        """Made in ``cluster.scope()``, so that a cluster's variables are mirrored; ``split``
        is the corpus's ``textgen.training.windows.split_ids`` and ``path`` is ``choose_path``'s
        answer."""
        from textgen.backend import tf

        self.tf = tf
        self.model = model
        self.config = config
        self.run_dir = run_dir
        self.echo = echo
        self.progress = progress
        self.callbacks = list(callbacks)
        self.cluster = cluster
        self.writes = cluster.is_chief  # the chief alone writes the run
        self.train_ids = split.train
        self.valid_ids = split.valid if len(split.valid) else None
        self.steps = steps_per_epoch(len(split.train), config.seq_length, config.batch_size)
        self.optimizer = make_optimizer(config)
        self.optimizer.build(model.trainable_variables)
        self.state = TrainState()
        self.grad_norm = tf.Variable(0.0, trainable=False, name="grad_norm")  # of the last step
        self.plan = plan_for_this_machine(config.precision)
        stock = path == "stock"
        self.train_step = make_steps(
            cluster, model, self.optimizer, config, self.grad_norm, self.plan, stock
        )
        self.eval_step = build_eval_step(model, cluster, stock)
        self._interrupt = {"stop": False}
        self._agreed_stop: str | None = None  # what the cluster's last vote decided
        self._pending_reason: str | None = None  # a callback's reason, for the next vote
        self.average = None
        if config.weight_average:
            named = named_variables(model)
            self.average = WeightAverage(named.values(), named.keys(), config.weight_average)

    def restore(self, saved: Checkpoint) -> None:
        """Load weights, optimizer state and loop position from a checkpoint."""
        set_weights(self.model, saved.weights)
        variables = self.optimizer.variables
        if len(saved.optimizer) != len(variables):
            raise CheckpointError("the checkpoint's optimizer state does not match this model")
        for var, value in zip(variables, saved.optimizer, strict=True):
            if tuple(var.shape) != tuple(value.shape):
                raise CheckpointError("the checkpoint's optimizer state does not match this model")
            var.assign(value)
        self.state = replace(saved.state)
        if self.average is not None:
            # A run that did not average before starts its average from the current weights.
            self.average.load(saved.average or saved.weights)

    def start_from(self, weights: dict[str, np.ndarray]) -> None:
        """Begin a new run from these weights (fine-tuning) instead of random ones."""
        set_weights(self.model, weights)
        if self.average is not None:
            self.average.load(weights)

    def share_checkpoint(self) -> None:
        """Give every worker of the cluster the chief's weights, optimizer state and position.

        A cluster of one process has them all already.
        """
        cluster = self.cluster
        if cluster.workers == 1:
            return
        weights = get_weights(self.model)
        names = sorted(weights)
        arrays = [weights[n] for n in names]
        optimizer = [np.asarray(v.numpy()) for v in self.optimizer.variables]
        average = self.average.arrays() if self.average is not None else {}
        arrays += optimizer + [average[n] for n in names if n in average]
        shared = cluster.broadcast_arrays(arrays)
        state = cluster.broadcast_text(json.dumps(self.state.to_json()))
        if not cluster.is_chief:
            count, opt_count = len(names), len(optimizer)
            restored = dict(zip(names, shared[:count], strict=True))
            averaged = dict(zip(names, shared[count + opt_count :], strict=False))
            state = TrainState.from_json(json.loads(state))
            self.restore(Checkpoint(restored, shared[count : count + opt_count], state, averaged))

    def save(self, with_best: bool = False) -> None:
        """Write the checkpoint files; ``best`` first, so a crash in between replays the epoch
        from the older ``latest`` and rewrites ``best`` rather than leaving a stale one.
        Only the chief of a cluster writes."""
        if not self.writes:
            return
        weights = get_weights(self.model)
        average = self.average.arrays() if self.average is not None else {}
        if with_best:
            # best.npz holds the weights that were validated: the average, when there is one.
            best = average or weights
            save_checkpoint(self.run_dir / rundir.BEST, Checkpoint(best, [], self.state))
        opt = [np.asarray(v.numpy()) for v in self.optimizer.variables]
        latest = Checkpoint(weights, opt, self.state, average)
        save_checkpoint(self.run_dir / rundir.LATEST, latest)

    def evaluate(self) -> float | None:
        """Mean validation loss in nats per character, or None without a validation split."""
        if self.valid_ids is None:
            return None
        cfg = self.config
        averaged = self.average.applied() if self.average is not None else contextlib.nullcontext()
        with averaged:
            return evaluate_ids(
                self.eval_step, self.valid_ids, cfg.seq_length, cfg.batch_size,
                cfg.validation_context, self.cluster,
            )  # fmt: skip

    # -- the loop ---------------------------------------------------------------------------

    def run(self) -> TrainResult:
        """Train until a stop condition holds; Ctrl-C saves and raises TrainingInterrupted."""
        from tqdm import tqdm

        clock = _Clock(seconds_before=self.state.seconds)
        bar = tqdm(
            total=self.steps,
            disable=None if self.progress else True,  # None: off when not a terminal
            leave=False,
            dynamic_ncols=True,
        )
        for callback in self.callbacks:
            callback.trainer = self
            callback.on_train_begin(self.state)
        with self._ending(), _graceful_interrupts() as interrupt:
            self._interrupt = interrupt
            with bar:
                stopped = self._loop(clock, bar, interrupt)
            return self._finish(stopped, clock)

    def _loop(self, clock: _Clock, bar, interrupt: dict) -> str:
        """Ends an epoch or trains a batch per turn, until a stop condition holds."""
        batches: Iterator | None = None
        stopped = None
        while stopped is None:
            stopped = self._stop_before_batch(clock, interrupt["stop"])
            if stopped is not None:
                break
            if self.state.batch >= self.steps:
                stopped = self._end_epoch(clock)
                batches = None
                continue
            if batches is None:
                batches = self._epoch_batches(bar)
            stopped = self._train_batch(next(batches), clock, bar)
        return stopped

    @contextlib.contextmanager
    def _ending(self) -> Iterator[None]:
        try:
            yield
        finally:
            for callback in self.callbacks:
                callback.on_train_end(self.state)

    def _stop_before_batch(self, clock: _Clock, interrupted: bool) -> str | None:
        """The stop condition that holds before the next batch, if any.

        A cluster's workers must stop at the same batch, so there the budget, Ctrl-C and the
        callbacks are voted on with each step (``VOTES``) and act after it.
        """
        limit = self.config.epoch_limit
        completed = limit is not None and self.state.epoch >= limit
        if self.train_step.voted:
            if self._agreed_stop is not None:
                return self._agreed_stop
            return "completed" if completed else None
        if interrupted:
            return "interrupted"
        if completed:
            return "completed"
        if self._budget_spent(clock):
            return "max_time"
        return None

    def _budget_spent(self, clock: _Clock) -> bool:
        """Whether the time budget is used: the run's when it is the plan, else this call's."""
        cfg = self.config
        if cfg.max_time is None:
            return False
        if cfg.budget_is_plan:
            return clock.seconds_before + clock.elapsed() >= cfg.max_time
        return clock.elapsed() >= cfg.max_time

    def _epoch_batches(self, bar) -> Iterator:
        cfg, state = self.config, self.state
        starts = epoch_starts(len(self.train_ids), cfg.seq_length, cfg.seed, state.epoch)
        starts = starts[state.batch * cfg.batch_size :]
        bar.reset(total=self.steps)
        bar.update(state.batch)
        limit = cfg.epoch_limit
        bar.set_description(f"epoch {state.epoch + 1}" + (f"/{limit}" if limit else ""))
        return self.train_step.batches(self.train_ids, starts, cfg.seq_length, cfg.batch_size)

    def _progress(self, clock: _Clock) -> float:
        cfg = self.config
        if cfg.budget_is_plan:
            return (clock.seconds_before + clock.elapsed()) / cfg.max_time
        by_steps = self.state.step / (cfg.epoch_limit * self.steps)
        if cfg.max_time is None:
            return by_steps
        return max(by_steps, clock.elapsed() / cfg.max_time)

    def _train_batch(self, batch, clock: _Clock, bar) -> str | None:
        tf, cfg, state = self.tf, self.config, self.state
        lr = learning_rate_at(cfg, self._progress(clock))
        seed = tf.constant([cfg.seed, state.step], tf.int32)
        loss = self._step(batch, seed, lr, clock)
        if not math.isfinite(loss):
            raise TextgenError("the training loss became NaN or infinite; lower --learning-rate")
        state.batch += 1
        state.step += 1
        state.loss_sum += loss
        if self.average is not None:
            self.average.update(state.step)
        bar.update(1)
        bar.set_postfix(loss=f"{state.loss_sum / state.batch:.4f}")
        now = time.monotonic()
        if now - clock.last_save >= cfg.checkpoint_every:
            state.seconds = clock.seconds_before + clock.elapsed()
            self.save()
            clock.last_save = now
        reason = _first_reason(cb.on_batch_end(state, loss) for cb in self.callbacks)
        if self.train_step.voted and reason is not None:
            self._pending_reason = reason  # voted on with the next step
            return None
        return reason

    def _step(self, batch, seed, lr: float, clock: _Clock) -> float:
        """One step; where the workers vote with it, their agreed stop is kept for the loop."""
        mine = [self._budget_spent(clock), self._interrupt["stop"], self._pending_reason]
        loss, votes = self.train_step(batch, seed, lr, [bool(v) for v in mine])
        # Every worker sees the same sums, so every worker picks the same reason.
        agreed = [name for name, v in zip(VOTES, votes, strict=True) if v]
        if not self.train_step.voted or not agreed:
            return loss
        if "interrupted" in agreed:
            self._agreed_stop = "interrupted"
        elif "callback" in agreed:
            self._agreed_stop = self._pending_reason or "stopped by a callback of another worker"
        else:
            self._agreed_stop = "max_time"
        return loss

    def _end_epoch(self, clock: _Clock) -> str | None:
        """Validate, log and checkpoint a finished (or budget-cut) epoch; the callbacks (among
        them ``EarlyStopping``) may stop the run here."""
        state = self.state
        state.seconds = clock.seconds_before + clock.elapsed()
        done = state.batch >= self.steps
        batches = max(state.batch, 1)
        train_loss = state.loss_sum / batches if state.batch else None
        val_loss = self.evaluate()
        label = state.epoch + 1 if done else state.epoch + batches / self.steps
        if done:
            state.epoch, state.batch, state.loss_sum = state.epoch + 1, 0, 0.0
        score = val_loss if val_loss is not None else train_loss
        improved = score is not None and (
            state.best_val_loss is None or score < state.best_val_loss
        )
        if improved:
            state.best_val_loss = score
            state.epochs_without_improvement = 0
        elif state.best_val_loss is not None and done:
            state.epochs_without_improvement += 1
        lr = float(self.optimizer.learning_rate.numpy())
        self._append_history(label, train_loss, val_loss, lr)
        self.save(with_best=improved or (self.writes and not (self.run_dir / rundir.BEST).exists()))
        clock.last_save = time.monotonic()
        self.echo(
            f"epoch {label:g}: train {describe_loss(train_loss)}, "
            f"validation {describe_loss(val_loss)}"
            + (" *best*" if improved and val_loss is not None else "")
        )
        epoch = EpochEnd(label, train_loss, val_loss, improved, lr)
        return _first_reason(cb.on_epoch_end(state, epoch) for cb in self.callbacks)

    def _append_history(self, label: float, train_loss, val_loss, lr: float) -> None:
        """Add the epoch's row, first dropping rows at or past its step (left by a crash)."""
        if not self.writes:
            return
        step = self.state.step
        rows = [r for r in rundir.read_history(self.run_dir) if int(r["step"]) < step]
        rows.append(
            {
                "epoch": round(label, 3),
                "step": step,
                "train_loss": "" if train_loss is None else round(train_loss, 6),
                "train_bpc": "" if train_loss is None else round(train_loss / LN2, 6),
                "val_loss": "" if val_loss is None else round(val_loss, 6),
                "val_bpc": "" if val_loss is None else round(val_loss / LN2, 6),
                "learning_rate": f"{lr:.6g}",
                "seconds": round(self.state.seconds, 1),
            }
        )
        rundir.write_history(self.run_dir, rows, HISTORY_FIELDS)

    def _finish(self, stopped: str, clock: _Clock) -> TrainResult:
        """Save where the loop stopped; a budget that cut an epoch still validates it."""
        state = self.state
        state.seconds = clock.seconds_before + clock.elapsed()
        if stopped == "interrupted":
            self.save()
            raise TrainingInterrupted(self.run_dir)
        if stopped == "max_time" and state.batch > 0:
            self._end_epoch(clock)  # validate and log the partial epoch
        elif stopped != "completed":
            self.save()
        epochs_done = state.epoch + state.batch / self.steps
        return TrainResult(self.run_dir, epochs_done, state.best_val_loss, stopped, self.plan)


def _first_reason(reasons) -> str | None:
    """The first stop reason a callback gave; every callback is still called."""
    found = [r for r in reasons if r]
    return found[0] if found else None
