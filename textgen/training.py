"""Training loop: corpus in, self-contained run directory out.

The loop is written out (rather than ``model.fit``) because resuming must be exact: the order
of windows depends only on (seed, epoch), dropout masks only on (seed, step), and a checkpoint
records the epoch, the batch inside it and the optimizer state, so a run stopped at any point
and resumed ends with the same weights as one that never stopped.
"""

from __future__ import annotations

import contextlib
import csv
import io
import math
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np

from textgen import checkpoint as ckpt
from textgen.data import (
    corpus_files,
    epoch_starts,
    split_ids,
    steps_per_epoch,
    window_dataset,
)
from textgen.errors import CheckpointError, TextgenError, VocabularyError
from textgen.evaluation import DEFAULT_CONTEXT, build_eval_step, evaluate_ids
from textgen.model import build_model, get_weights, set_weights
from textgen.prepare import prepare_corpus
from textgen.tokenizer import Tokenizer

LN2 = math.log(2.0)
CACHE_DIR = ".cache"  # id arrays of prepared corpora, shared by the runs in one folder
# Settings that fix the network's shape or the data order: a resumed run must keep them.
LOCKED_ON_RESUME = (
    "embedding_dim",
    "units",
    "num_layers",
    "cell",
    "batch_size",
    "seq_length",
    "validation_split",
    "validation_context",  # best.npz is chosen by a loss that must be measured one way
    "seed",
    "max_vocab",
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


@dataclass
class TrainConfig:
    """Every setting of a training run; saved in ``config.json``."""

    epochs: int = 20  # epochs to reach in total (a resumed run continues up to this)
    batch_size: int = 32  # more, smaller steps learn faster per minute than 64 on a CPU
    seq_length: int = 100  # characters per training window
    embedding_dim: int = 64
    units: int = 512  # recurrent units per layer
    num_layers: int = 1
    cell: str = "lstm"  # "lstm", "gru" or "simple"
    dropout: float = 0.3  # on the last recurrent layer's output
    learning_rate: float = 4e-3  # Adam's peak rate
    lr_schedule: str = "cosine"  # "cosine" (decay to 10% of the peak) or "constant"
    clip_norm: float | None = 5.0  # global gradient-norm clip; None disables it
    validation_split: float = 0.1  # fraction held out from the END of the text
    validation_context: int = DEFAULT_CONTEXT  # characters read before each scored window
    seed: int = 0
    max_time: float | None = None  # wall-clock budget in seconds for this invocation
    patience: int | None = None  # stop after this many epochs without a better val loss
    checkpoint_every: float = 60.0  # seconds between mid-epoch checkpoints
    max_vocab: int | None = None  # keep only the most frequent characters
    encoding: str = "utf-8"
    errors: str = "strict"  # or "replace": how to treat undecodable bytes

    def validate(self) -> None:
        """Raise TextgenError for settings that cannot work."""
        checks = [
            (self.epochs >= 1, "epochs must be at least 1"),
            (self.batch_size >= 1, "batch size must be at least 1"),
            (self.seq_length >= 1, "sequence length must be at least 1"),
            (self.validation_context >= 0, "validation context must be at least 0"),
            (self.learning_rate > 0 and math.isfinite(self.learning_rate), "bad learning rate"),
            (self.lr_schedule in ("cosine", "constant"), "lr schedule: cosine or constant"),
            (self.clip_norm is None or self.clip_norm > 0, "clip norm must be positive"),
            (self.max_time is None or self.max_time > 0, "max time must be positive"),
            (self.patience is None or self.patience >= 1, "patience must be at least 1"),
            (self.checkpoint_every > 0, "checkpoint interval must be positive"),
            (self.errors in ("strict", "replace"), "errors must be 'strict' or 'replace'"),
        ]
        for ok, message in checks:
            if not ok:
                raise TextgenError(message)


@dataclass
class TrainResult:
    """What a training call achieved."""

    run_dir: Path
    epochs_done: float
    best_val_loss: float | None
    stopped: str  # "completed", "max_time", "early_stopping" or "interrupted"


class TrainingInterrupted(TextgenError):
    """Ctrl-C stopped training; a checkpoint was saved first."""

    def __init__(self, run_dir: Path) -> None:
        super().__init__(f"interrupted; checkpoint saved in {run_dir} (continue with --resume)")
        self.run_dir = run_dir


def default_run_dir(corpus_name: str) -> Path:
    """``checkpoints/<corpus name>``: where a run lives unless told otherwise."""
    stem = Path(corpus_name.rstrip("/")).stem or "corpus"
    return ckpt.DEFAULT_ROOT / stem


def learning_rate_at(config: TrainConfig, progress: float) -> float:
    """The learning rate at a fraction ``progress`` in [0, 1] of the run."""
    if config.lr_schedule == "constant":
        return config.learning_rate
    floor = 0.1
    cosine = 0.5 * (1.0 + math.cos(math.pi * min(max(progress, 0.0), 1.0)))
    return config.learning_rate * (floor + (1.0 - floor) * cosine)


def _config_for(corpus: str, settings: dict, run_dir: Path, resume: bool) -> TrainConfig:
    names = {f.name for f in fields(TrainConfig)}
    unknown = set(settings) - names
    if unknown:
        raise TextgenError(f"unknown training settings: {', '.join(sorted(unknown))}")
    if not resume:
        return TrainConfig(**settings)
    saved = ckpt.read_config(run_dir)["training"]
    for key in LOCKED_ON_RESUME:
        if key in settings and settings[key] != saved.get(key):
            raise CheckpointError(
                f"cannot resume {run_dir} with {key}={settings[key]!r}: the run was trained with "
                f"{key}={saved.get(key)!r}"
            )
    merged = {k: v for k, v in saved.items() if k in names}
    # Runs from before validation read context were validated from zero states.
    merged.setdefault("validation_context", 0)
    merged.update(settings)
    return TrainConfig(**merged)


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


def _append_history(run_dir: Path, row: dict) -> None:
    """Add a row, first dropping rows at or past its step (left by a crash that is replayed)."""
    path = run_dir / ckpt.HISTORY
    old = path.read_text(encoding="utf-8") if path.exists() else ""
    rows = [r for r in csv.DictReader(io.StringIO(old)) if int(r["step"]) < int(row["step"])]
    out = io.StringIO()
    writer = csv.DictWriter(out, HISTORY_FIELDS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows + [row])
    ckpt.write_text(path, out.getvalue())


def _fmt(loss: float | None) -> str:
    return "n/a" if loss is None else f"{loss:.4f} nats ({loss / LN2:.4f} bpc)"


def train(
    corpus: str | Path,
    *,
    run_dir: str | Path | None = None,
    resume: bool = False,
    progress: bool = True,
    echo: Callable[[str], None] = print,
    **settings,
) -> TrainResult:
    """Train a model on ``corpus`` and keep it in ``run_dir`` (default ``checkpoints/<name>``).

    Args:
        corpus: a text file, a folder or a glob (see ``textgen.data.read_corpus``).
        run_dir: the run directory; it must not already hold a run unless ``resume`` is set.
        resume: continue the run in ``run_dir``; shape and data-order settings must match.
        progress: show a tqdm progress bar.
        echo: where per-epoch summaries go.
        **settings: fields of ``TrainConfig``; on resume, the saved values fill the rest.

    Returns:
        A TrainResult. Ctrl-C saves a checkpoint and raises TrainingInterrupted.
    """
    corpus = str(corpus)
    run_dir = Path(run_dir) if run_dir is not None else default_run_dir(corpus)
    if not resume and (run_dir / ckpt.CONFIG).exists():
        raise CheckpointError(
            f"{run_dir} already holds a run; add --resume to continue it, or choose another "
            "--checkpoint-dir"
        )
    if resume and not (run_dir / ckpt.CONFIG).exists():
        raise CheckpointError(f"nothing to resume: {run_dir} holds no run")
    config = _config_for(corpus, settings, run_dir, resume)
    config.validate()

    saved_tokenizer = Tokenizer.load(run_dir / ckpt.TOKENIZER) if resume else None
    corpus_files(corpus)  # a missing corpus is reported before anything is created
    created = not run_dir.exists()
    ckpt.ensure_writable(run_dir)
    try:
        prepared = prepare_corpus(
            corpus,
            cache_dir=run_dir.parent / CACHE_DIR,
            encoding=config.encoding,
            errors=config.errors,
            max_vocab=config.max_vocab,
            tokenizer=saved_tokenizer,
        )
        split = split_ids(prepared.ids, config.validation_split, config.seq_length)
    except TextgenError as err:
        if created:
            with contextlib.suppress(OSError):
                run_dir.rmdir()  # leave no empty run behind for a corpus that failed
        if resume and isinstance(err, VocabularyError):
            raise CheckpointError(f"cannot resume {run_dir}: {err}") from None
        raise
    tokenizer = prepared.tokenizer
    ids = prepared.ids

    from textgen.backend import keras

    keras.utils.set_random_seed(config.seed)
    model = build_model(
        tokenizer.vocab_size,
        embedding_dim=config.embedding_dim,
        units=config.units,
        num_layers=config.num_layers,
        dropout=config.dropout,
        cell=config.cell,
    )
    trainer = _Trainer(model, config, split, run_dir, echo, progress)
    if resume:
        ckpt.remove_stale_temporaries(run_dir)
        trainer.restore(ckpt.load_checkpoint(run_dir / ckpt.LATEST))
        saved = ckpt.read_config(run_dir)
        saved["training"] = asdict(config)  # the settings this invocation runs with
        ckpt.write_config(run_dir, saved)
    else:
        tokenizer.save(run_dir / ckpt.TOKENIZER)
        # A step-0 checkpoint before the config: a run directory with a config always has a
        # checkpoint to resume from, even if the process is killed before the first save.
        trainer.save_initial()
        ckpt.write_config(
            run_dir,
            {
                "model": {
                    "vocab_size": tokenizer.vocab_size,
                    "embedding_dim": config.embedding_dim,
                    "units": config.units,
                    "num_layers": config.num_layers,
                    "cell": config.cell,
                    "dropout": config.dropout,
                },
                "training": asdict(config),
                "corpus": {
                    "source": corpus,
                    "characters": int(len(ids)),
                    "sha256": prepared.sha256,
                },
            },
        )
    return trainer.run()


def build_train_step(model, optimizer, dropout: float):
    """The compiled training step ``(x, y, seed, lr) -> mean loss`` that ``train`` runs.

    ``seed`` (int32 [2]) fixes the dropout mask and ``lr`` is assigned before the update, so a
    step is a pure function of the model, optimizer state and its arguments.
    """
    from textgen.backend import tf
    from textgen.forward import make_forward

    forward = make_forward(model, dropout)
    variables = model.trainable_variables
    ids = tf.TensorSpec([None, None], tf.int32)
    signature = [ids, ids, tf.TensorSpec([2], tf.int32), tf.TensorSpec([], tf.float32)]

    @tf.function(input_signature=signature)
    def train_step(x, y, seed, lr):
        with tf.GradientTape() as tape:
            logits = forward(x, training=True, seed=seed)  # (B, T, vocab)
            loss = tf.reduce_mean(
                tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=logits)
            )
        grads = tape.gradient(loss, variables)
        optimizer.learning_rate.assign(lr)
        optimizer.apply_gradients(zip(grads, variables))
        return loss

    return train_step


def make_optimizer(config: TrainConfig):
    """Adam with the run's peak learning rate and gradient clipping, built for the model."""
    from textgen.backend import keras

    return keras.optimizers.Adam(
        learning_rate=config.learning_rate, global_clipnorm=config.clip_norm
    )


class _Trainer:
    """The state of one training invocation; ``run`` drives the epochs."""

    def __init__(self, model, config: TrainConfig, split, run_dir: Path, echo, progress: bool):
        from textgen.backend import tf

        self.tf = tf
        self.model = model
        self.config = config
        self.run_dir = run_dir
        self.echo = echo
        self.progress = progress
        self.train_ids = split.train
        self.valid_ids = split.valid if len(split.valid) else None
        self.n_train = len(split.train)
        self.steps = steps_per_epoch(self.n_train, config.seq_length, config.batch_size)
        self.optimizer = make_optimizer(config)
        self.optimizer.build(model.trainable_variables)
        self.state = {
            "epoch": 0,  # completed epochs
            "batch": 0,  # batches done in the current epoch
            "step": 0,  # batches done in the whole run
            "loss_sum": 0.0,  # training loss summed over the current epoch's batches
            "best_val_loss": None,
            "epochs_without_improvement": 0,
            "seconds": 0.0,  # training time over all invocations
        }
        self._build_steps()

    def _build_steps(self) -> None:
        self.train_step = build_train_step(self.model, self.optimizer, self.config.dropout)
        self.eval_step = build_eval_step(self.model)

    def restore(self, saved: ckpt.Checkpoint) -> None:
        """Load weights, optimizer state and loop position from a checkpoint."""
        set_weights(self.model, saved.weights)
        variables = self.optimizer.variables
        if len(saved.optimizer) != len(variables):
            raise CheckpointError("the checkpoint's optimizer state does not match this model")
        for var, value in zip(variables, saved.optimizer, strict=True):
            if tuple(var.shape) != tuple(value.shape):
                raise CheckpointError("the checkpoint's optimizer state does not match this model")
            var.assign(value)
        self.state.update(saved.state)

    def _save(self, with_best: bool = False) -> None:
        """Write the checkpoint files; ``best`` first, so a crash in between replays the epoch
        from the older ``latest`` and rewrites ``best`` rather than leaving a stale one."""
        weights = get_weights(self.model)
        if with_best:
            ckpt.save_checkpoint(self.run_dir / ckpt.BEST, ckpt.Checkpoint(weights, [], self.state))
        opt = [np.asarray(v.numpy()) for v in self.optimizer.variables]
        ckpt.save_checkpoint(self.run_dir / ckpt.LATEST, ckpt.Checkpoint(weights, opt, self.state))

    def save_initial(self) -> None:
        """Checkpoint the freshly initialised model (step 0) as both latest and best."""
        self._save(with_best=True)

    def evaluate(self) -> float | None:
        """Mean validation loss in nats per character, or None without a validation split."""
        if self.valid_ids is None:
            return None
        cfg = self.config
        return evaluate_ids(
            self.eval_step, self.valid_ids, cfg.seq_length, cfg.batch_size, cfg.validation_context
        )

    def _progress(self, started: float) -> float:
        cfg = self.config
        by_steps = self.state["step"] / (cfg.epochs * self.steps)
        if cfg.max_time is None:
            return by_steps
        return max(by_steps, (time.monotonic() - started) / cfg.max_time)

    def run(self) -> TrainResult:
        """Train until the epochs, the time budget or the patience run out, or Ctrl-C."""
        from tqdm import tqdm

        tf, cfg, state = self.tf, self.config, self.state
        started = time.monotonic()
        seconds_before = state["seconds"]
        last_save = started
        stopped = "completed"
        with _graceful_interrupts() as interrupt:
            while state["epoch"] < cfg.epochs:
                starts = epoch_starts(self.n_train, cfg.seq_length, cfg.seed, state["epoch"])
                starts = starts[state["batch"] * cfg.batch_size :]
                batches = window_dataset(self.train_ids, starts, cfg.seq_length, cfg.batch_size)
                bar = tqdm(
                    total=self.steps,
                    initial=state["batch"],
                    desc=f"epoch {state['epoch'] + 1}/{cfg.epochs}",
                    disable=None if self.progress else True,  # None: off when not a terminal
                    leave=False,
                    dynamic_ncols=True,
                )
                for x, y in batches:
                    if interrupt["stop"]:
                        break
                    if cfg.max_time is not None and time.monotonic() - started >= cfg.max_time:
                        stopped = "max_time"
                        break
                    lr = learning_rate_at(cfg, self._progress(started))
                    seed = tf.constant([cfg.seed, state["step"]], tf.int32)
                    loss = float(self.train_step(x, y, seed, tf.constant(lr, tf.float32)))
                    if not math.isfinite(loss):
                        bar.close()
                        raise TextgenError(
                            "the training loss became NaN or infinite; lower --learning-rate"
                        )
                    state["batch"] += 1
                    state["step"] += 1
                    state["loss_sum"] += loss
                    bar.update(1)
                    bar.set_postfix(loss=f"{state['loss_sum'] / state['batch']:.4f}")
                    now = time.monotonic()
                    if now - last_save >= cfg.checkpoint_every:
                        state["seconds"] = seconds_before + now - started
                        self._save()
                        last_save = now
                bar.close()
                state["seconds"] = seconds_before + time.monotonic() - started
                if interrupt["stop"]:
                    self._save()
                    raise TrainingInterrupted(self.run_dir)
                epoch_done = state["batch"] >= self.steps
                if not epoch_done and stopped == "completed":
                    stopped = "max_time"  # the loop above ended early only for the budget
                if state["batch"] == 0 and not epoch_done:  # the budget ended between epochs
                    self._save()
                    break
                improved = self._end_of_epoch(epoch_done)
                if stopped == "max_time":
                    break
                if improved:
                    state["epochs_without_improvement"] = 0
                elif state["best_val_loss"] is not None:
                    state["epochs_without_improvement"] += 1
                    if cfg.patience and state["epochs_without_improvement"] >= cfg.patience:
                        stopped = "early_stopping"
                        self._save()
                        break
        epochs_done = state["epoch"] + state["batch"] / self.steps
        return TrainResult(self.run_dir, epochs_done, state["best_val_loss"], stopped)

    def _end_of_epoch(self, epoch_done: bool) -> bool:
        """Validate, log, checkpoint; returns True when validation loss improved."""
        state = self.state
        batches = max(state["batch"], 1)
        train_loss = state["loss_sum"] / batches if state["batch"] else None
        val_loss = self.evaluate()
        epoch_label = state["epoch"] + 1 if epoch_done else state["epoch"] + batches / self.steps
        if epoch_done:
            state["epoch"] += 1
            state["batch"] = 0
            state["loss_sum"] = 0.0
        score = val_loss if val_loss is not None else train_loss
        best = state["best_val_loss"]
        improved = score is not None and (best is None or score < best)
        if improved:
            state["best_val_loss"] = score
        _append_history(
            self.run_dir,
            {
                "epoch": round(epoch_label, 3),
                "step": state["step"],
                "train_loss": "" if train_loss is None else round(train_loss, 6),
                "train_bpc": "" if train_loss is None else round(train_loss / LN2, 6),
                "val_loss": "" if val_loss is None else round(val_loss, 6),
                "val_bpc": "" if val_loss is None else round(val_loss / LN2, 6),
                "learning_rate": f"{float(self.optimizer.learning_rate.numpy()):.6g}",
                "seconds": round(state["seconds"], 1),
            },
        )
        self._save(with_best=improved or not (self.run_dir / ckpt.BEST).exists())
        self.echo(
            f"epoch {epoch_label:g}: train {_fmt(train_loss)}, validation {_fmt(val_loss)}"
            + (" *best*" if improved and val_loss is not None else "")
        )
        return improved
