"""Training loop: corpus in, self-contained run directory out.

The loop is written out (rather than ``model.fit``) because resuming must be exact: the order
of windows depends only on (seed, epoch), dropout masks only on (seed, step), and a checkpoint
records the epoch, the batch inside it and the optimizer state, so a run stopped at any point
and resumed ends with the same weights as one that never stopped.

The loop is flat: each turn either ends an epoch or trains one batch, after asking the stop
conditions (``STOPS``: epochs, budget, interrupt, and a callback's reason, such as
``EarlyStopping``'s). Callbacks observe it, and may stop it, through ``on_batch_end`` and
``on_epoch_end``; that is where logging and other features plug in without touching the loop.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
import signal
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from textgen import run as rundir
from textgen.averaging import WeightAverage
from textgen.callbacks import Callback, EarlyStopping, EpochEnd
from textgen.checkpoint import Checkpoint, save_checkpoint
from textgen.config import RunConfig, TrainConfig, TrainState
from textgen.corpus import DEFAULT_CORPUS, check_exists, load_corpus
from textgen.distribute import Cluster, choose_path, lost_worker_errors, make_cluster
from textgen.errors import CheckpointError, OptionsError, TextgenError, VocabularyError
from textgen.evaluation import LN2, build_eval_step, describe_loss, evaluate_ids
from textgen.model import build_model, get_weights, named_variables, set_weights
from textgen.precision import resolve_precision
from textgen.steps import VOTES, build_replica_train_step, build_train_step, make_optimizer
from textgen.tokenizer import Tokenizer
from textgen.windows import (
    epoch_starts,
    replica_windows,
    split_ids,
    steps_per_epoch,
    window_dataset,
)

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
    precision: str = "float32"  # of the large matrix products, as ``auto`` resolved


class TrainingInterrupted(TextgenError):
    """Ctrl-C stopped training; a checkpoint was saved first."""

    interrupted = True  # the command line exits with 130 for this

    def __init__(self, run_dir: Path) -> None:
        super().__init__(f"interrupted; checkpoint saved in {run_dir} (continue with --resume)")
        self.run_dir = run_dir


def default_run_dir(corpus_name: str) -> Path:
    """``checkpoints/<corpus name>``: where a run lives unless told otherwise."""
    stem = Path(str(corpus_name).rstrip("/")).stem or "corpus"
    return rundir.DEFAULT_ROOT / stem


def learning_rate_at(config: TrainConfig, progress: float) -> float:
    """The learning rate at a fraction ``progress`` in [0, 1] of the run."""
    if config.lr_schedule == "constant":
        return config.learning_rate
    floor = 0.1
    cosine = 0.5 * (1.0 + math.cos(math.pi * min(max(progress, 0.0), 1.0)))
    return config.learning_rate * (floor + (1.0 - floor) * cosine)


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


def train(
    corpus: str | Path | None = None,
    *,
    run_dir: str | Path | None = None,
    resume: bool = False,
    progress: bool = True,
    echo: Callable[[str], None] = print,
    callbacks: Sequence[Callback] = (),
    distribute: str = "none",
    device: str = "auto",
    init_from: str | Path | None = None,
    **settings,
) -> TrainResult:
    """Train a model on ``corpus`` and keep it in ``run_dir`` (default ``checkpoints/<name>``).

    Args:
        corpus: a text file, a folder, a glob or a corpus name (see ``textgen.corpus``); the
            default is ``DEFAULT_CORPUS`` (pydocs), or the run's own corpus when resuming.
        run_dir: the run directory; it must not already hold a run unless ``resume`` is set.
        resume: continue the run in ``run_dir``; shape and data-order settings must match.
        progress: show a tqdm progress bar.
        echo: where per-epoch summaries go.
        callbacks: ``Callback`` objects told of every batch and epoch.
        distribute: ``none``, ``mirrored`` or ``multi-worker`` (see ``textgen.distribute``);
            on a cluster, every worker calls ``train`` with the same arguments and only worker
            0 writes ``run_dir``.
        device: ``auto``, ``cpu`` or ``gpu``: which recurrent path trains (``choose_path``).
        init_from: start a new run from this trained run directory or shipped model (such as
            ``base``), with its shape and a vocabulary merged from both (``textgen.finetune``).
        **settings: fields of ``TrainConfig``; on resume, the saved values fill the rest.

    Returns:
        A TrainResult. Ctrl-C saves a checkpoint and raises TrainingInterrupted. A second
        trainer on the same run directory, or a failed write, raises a TextgenError; so does
        the loss of a worker of a cluster.
    """
    if run_dir is None:
        run_dir = default_run_dir(corpus or DEFAULT_CORPUS)
    run_dir = Path(run_dir)
    source = None
    if init_from is not None:
        from textgen.finetune import open_source, shape_settings

        if resume:
            raise OptionsError("--init-from starts a new run; it cannot be used with --resume")
        source = open_source(init_from)
        settings = {**settings, **shape_settings(source, settings)}
    config = None if resume else TrainConfig.from_settings(settings)
    if config is not None:
        config.validate()  # bad settings fail before any file is made
    if corpus is not None or not resume:
        check_exists(corpus or DEFAULT_CORPUS)  # so does a missing corpus
    cluster = make_cluster(distribute)  # before any other TensorFlow op
    args = (corpus, run_dir, config, progress, echo, callbacks, settings, cluster, device, source)
    if cluster is not None and not cluster.is_chief:
        with _lost_workers(cluster, run_dir):
            return _train_locked(*args)
    with rundir.writing(run_dir), _lost_workers(cluster, run_dir):
        return _train_locked(*args)


@contextlib.contextmanager
def _lost_workers(cluster: Cluster | None, run_dir: Path) -> Iterator[None]:
    """Turn the error a collective raises when a peer has gone into one clear TextgenError."""
    if cluster is None:
        yield
        return
    try:
        yield
    except lost_worker_errors() as err:
        lines = (getattr(err, "message", "") or str(err)).splitlines()
        said = [re.sub(r"\{\{[^}]*\}\}", "", line).strip() for line in lines]
        said = [line for line in said if line and not line.endswith("execution error:")]
        reason = (said[0] if said else type(err).__name__)[:200]
        raise TextgenError(
            f"worker {cluster.worker} of {cluster.workers} lost contact with the cluster "
            f"({reason}); once every worker has stopped, rerun each of them with --resume to "
            f"continue from the last checkpoint in {run_dir}"
        ) from None


def _train_locked(
    corpus, run_dir: Path, config, progress, echo, callbacks, settings, cluster, device, source
):
    """``train`` once the run directory's lock is held; ``config`` is None when resuming;
    ``source`` is the ``textgen.finetune.Source`` a new run starts from, if any."""
    if cluster is not None and not cluster.is_chief:
        return _train_follower(corpus, run_dir, progress, echo, callbacks, cluster, device)
    resumed = rundir.resume_run(run_dir, settings) if config is None else None
    if resumed is None:
        rundir.check_new_run(run_dir)
    else:
        config = resumed.config.training
        corpus = corpus or resumed.config.corpus.get("source")
    corpus = str(corpus or DEFAULT_CORPUS)

    try:
        prepared = load_corpus(
            corpus,
            cache_dir=run_dir.parent / rundir.CACHE_DIR,
            encoding=config.encoding,
            errors=config.errors,
            max_vocab=config.max_vocab,
            tokenizer=resumed.tokenizer if resumed is not None else None,
            base=source.run.tokenizer if source is not None else None,
        )
        split = split_ids(prepared.ids, config.validation_split, config.seq_length)
    except VocabularyError as err:
        if resumed is not None:
            raise CheckpointError(f"cannot resume {run_dir}: {err}") from None
        raise
    tokenizer = prepared.tokenizer
    corpus_record = {
        "source": corpus,
        "characters": int(len(prepared.ids)),
        "sha256": prepared.sha256,
    }
    if resumed is not None:
        run_config = resumed.config
    else:
        init_record = source.record() if source is not None else None
        model = config.model(tokenizer.vocab_size)
        run_config = RunConfig(model, config, corpus_record, init_record)
    if cluster is not None:
        shared = {"run": run_config.to_json(), "tokenizer": tokenizer.to_json()}
        shared.update(sha256=prepared.sha256, resume=resumed is not None, init=source is not None)
        cluster.broadcast_text(json.dumps(shared))

    watchers = _watchers(config, tokenizer, run_dir, echo)
    trainer = _make_trainer(config, tokenizer, split, run_dir, echo, progress, cluster, device)
    trainer.callbacks = [*watchers, *callbacks, *_stops(config)]
    if resumed is not None:
        trainer.restore(resumed.checkpoint)
        if cluster is not None:
            trainer.share_checkpoint()
        rundir.write_config(run_dir, run_config)
    else:
        if source is not None:
            from textgen.finetune import transfer_weights

            trainer.start_from(transfer_weights(source, tokenizer, split.train))
            if cluster is not None:
                trainer.share_checkpoint()
        rundir.create_run(run_dir, run_config, tokenizer, lambda: trainer.save(with_best=True))
    return trainer.run()


def _make_trainer(config, tokenizer, split, run_dir, echo, progress, cluster, device):
    """The model and its Trainer, built in the cluster's scope so its variables are mirrored."""
    from textgen.backend import keras
    from textgen.distribute import visible_gpus

    path = choose_path(device, visible_gpus())
    keras.utils.set_random_seed(config.seed)
    scope = cluster.strategy.scope() if cluster is not None else contextlib.nullcontext()
    with scope:
        model = build_model(config.model(tokenizer.vocab_size))
        return Trainer(model, config, split, run_dir, echo, progress, (), cluster, path)


def _train_follower(corpus, run_dir: Path, progress, echo, callbacks, cluster: Cluster, device):
    """A worker other than the chief: the chief's settings, vocabulary and checkpoint, no files.

    Its ids are cached in the system's temporary folder, not beside the run directory, which
    may be the chief's disk or storage that only the chief writes.
    """
    shared = json.loads(cluster.broadcast_text(None))
    run_config = RunConfig.from_json(shared["run"], "the chief's run config")
    config = run_config.training
    tokenizer = Tokenizer.from_json(shared["tokenizer"])
    prepared = load_corpus(
        str(corpus or run_config.corpus.get("source") or DEFAULT_CORPUS),
        cache_dir=Path(tempfile.gettempdir()) / "textgen-cache",
        encoding=config.encoding,
        errors=config.errors,
        max_vocab=config.max_vocab,
        tokenizer=tokenizer if shared["resume"] else None,  # as the chief read it
    )
    if prepared.sha256 != shared["sha256"] or prepared.tokenizer != tokenizer:
        raise TextgenError(
            f"worker {cluster.worker}'s corpus differs from the chief's (sha256 "
            f"{prepared.sha256[:12]}... against {shared['sha256'][:12]}...); give every worker "
            "the same text"
        )
    split = split_ids(prepared.ids, config.validation_split, config.seq_length)
    trainer = _make_trainer(config, tokenizer, split, run_dir, echo, progress, cluster, device)
    trainer.callbacks = [*callbacks, *_stops(config)]
    if shared["resume"] or shared.get("init"):
        trainer.share_checkpoint()
    return trainer.run()


def _stops(config: TrainConfig) -> list[Callback]:
    """The callbacks that stop a run by its settings, last, so that a reason of the caller's
    own callbacks comes first."""
    return [EarlyStopping(config.patience)] if config.patience else []


def _watchers(config: TrainConfig, tokenizer, run_dir: Path, echo) -> list[Callback]:
    """The callbacks every run gets unless its settings turn them off."""
    from textgen.watch import EpochSample, TensorBoardLogger

    watchers: list[Callback] = []
    sample = None
    if config.sample_every:
        sample = EpochSample(tokenizer, config.cell, config.seed, config.sample_every, echo)
        watchers.append(sample)
    if config.tensorboard:
        chars = config.batch_size * config.seq_length
        watchers.append(TensorBoardLogger(run_dir / rundir.TENSORBOARD, chars, sample))
    return watchers


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
        echo: Callable[[str], None] = print,
        progress: bool = False,
        callbacks: Sequence[Callback] = (),
        cluster: Cluster | None = None,
        path: str = "fast",
    ) -> None:
        """A cluster's trainer is made in ``cluster.strategy.scope()``; ``path`` is
        ``choose_path``'s answer."""
        from textgen.backend import tf

        self.tf = tf
        self.model = model
        self.config = config
        self.run_dir = run_dir
        self.echo = echo
        self.progress = progress
        self.callbacks = list(callbacks)
        self.cluster = cluster
        self.writes = cluster is None or cluster.is_chief  # the chief alone writes the run
        self.train_ids = split.train
        self.valid_ids = split.valid if len(split.valid) else None
        self.steps = steps_per_epoch(len(split.train), config.seq_length, config.batch_size)
        self.optimizer = make_optimizer(config)
        self.optimizer.build(model.trainable_variables)
        self.state = TrainState()
        self.grad_norm = tf.Variable(0.0, trainable=False, name="grad_norm")  # of the last step
        self.precision = resolve_precision(config.precision)
        matmul_dtype = tf.bfloat16 if self.precision == "bfloat16" else None
        stock = path == "stock"
        if cluster is None:
            self.train_step = build_train_step(
                model,
                self.optimizer,
                config.noise(),
                self.grad_norm,
                matmul_dtype,
                stock=stock,
                weight_decay=config.weight_decay,
            )
        else:
            self.train_step = build_replica_train_step(
                cluster,
                model,
                self.optimizer,
                config.noise(),
                self.grad_norm,
                stock,
                matmul_dtype,
                config.weight_decay,
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
        """Give every worker of the cluster the chief's weights, optimizer state and position."""
        cluster = self.cluster
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
        if self.cluster is not None:
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
        if self.cluster is not None:
            rows_of = self.cluster.local_rows
            return replica_windows(self.train_ids, starts, cfg.seq_length, cfg.batch_size, rows_of)
        return window_dataset(self.train_ids, starts, cfg.seq_length, cfg.batch_size)

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
        if self.cluster is None:
            x, y = batch
            loss = float(self.train_step(x, y, seed, tf.constant(lr, tf.float32)))
        else:
            loss = self._train_replicas(batch, seed, lr, clock)
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
        if self.cluster is not None and reason is not None:
            self._pending_reason = reason  # voted on with the next step
            return None
        return reason

    def _train_replicas(self, batch, seed, lr: float, clock: _Clock) -> float:
        """One step of a cluster, with this worker's votes on stopping after it."""
        tf, cluster = self.tf, self.cluster
        parts, rows = batch
        blocks = cluster.local_rows(rows)
        x = cluster.per_replica([tf.constant(px) for px, _ in parts])
        y = cluster.per_replica([tf.constant(py) for _, py in parts])
        offset = cluster.per_replica([tf.constant(lo, tf.int32) for lo, _ in blocks])
        budget = self._budget_spent(clock)
        mine = [budget, self._interrupt["stop"], self._pending_reason is not None]
        votes = tf.constant(mine, tf.float32)
        lr_t = tf.constant(lr, tf.float32)
        loss, votes = self.train_step(x, y, offset, tf.constant(rows, tf.int32), seed, lr_t, votes)
        # Every worker sees the same sums, so every worker picks the same reason.
        agreed = [name for name, v in zip(VOTES, votes.numpy(), strict=True) if v > 0]
        if "interrupted" in agreed:
            self._agreed_stop = "interrupted"
        elif "callback" in agreed:
            self._agreed_stop = self._pending_reason or "stopped by a callback of another worker"
        elif agreed:
            self._agreed_stop = "max_time"
        return float(loss)

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
        return TrainResult(self.run_dir, epochs_done, state.best_val_loss, stopped, self.precision)


def _first_reason(reasons) -> str | None:
    """The first stop reason a callback gave; every callback is still called."""
    found = [r for r in reasons if r]
    return found[0] if found else None
