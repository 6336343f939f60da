"""Run directories: their layout, the one loader every reader uses, and the one-writer lock.

Layout of a run directory::

    config.json      model and training settings, and the corpus (``textgen.config.RunConfig``)
    tokenizer.json   the vocabulary
    latest.npz       weights, optimizer state and loop position of the newest checkpoint
    best.npz         weights of the checkpoint with the lowest validation loss
    history.csv      one row per finished epoch
    tensorboard/     TensorBoard event files (``textgen.training.watch``)
    .lock            held (through ``filelock``) by the process that trains the run
    .lock.pid        that process's pid, for the message another trainer gets

Every file is written atomically (``textgen.files``), so a crash never leaves half a file.

Models shipped inside the package (``textgen/models/<name>``, such as ``base``) are run
directories too, without ``latest.npz`` or a lock: wherever a run directory is asked for, a name
that is not an existing path is looked up there (``resolve_run``).
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import tempfile
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

with warnings.catch_warnings():
    # Where the platform has neither fcntl nor msvcrt, filelock warns that it falls back to a
    # marker file; that lock also frees itself once its holder's pid is gone, which is all the
    # run needs, so the warning would only alarm.
    warnings.simplefilter("ignore")
    from filelock import FileLock, Timeout

from textgen.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from textgen.config import LOCKED_ON_RESUME, RunConfig, TrainConfig, TrainState
from textgen.errors import CheckpointError, StorageError, TextgenError
from textgen.files import remove_stale_temporaries, write_text
from textgen.tokenizer import Tokenizer
from textgen.weights import check_weights

CONFIG = "config.json"
TOKENIZER = "tokenizer.json"
LATEST = "latest.npz"
BEST = "best.npz"
HISTORY = "history.csv"
LOCK = ".lock"
LOCK_HOLDER = ".lock.pid"
TENSORBOARD = "tensorboard"
DEFAULT_ROOT = Path("checkpoints")
# Beside the runs of one folder: the id arrays (and copy indexes) of the corpora they train on.
CACHE_DIR = ".cache"
WHICH = ("best", "latest")
SHIPPED = Path(__file__).resolve().parent / "models"  # models that come with textgen


def shipped_models() -> list[str]:
    """The names of the models shipped inside the package."""
    if not SHIPPED.is_dir():
        return []
    return sorted(p.name for p in SHIPPED.iterdir() if (p / CONFIG).is_file())


def resolve_run(spec: str | os.PathLike) -> Path:
    """A run directory as given, or, for a bare name that is no path here, a shipped model."""
    path = Path(spec)
    if path.exists() or len(path.parts) != 1:
        return path
    shipped = SHIPPED / path.name
    return shipped if (shipped / CONFIG).is_file() else path


def is_shipped(run_dir: Path) -> bool:
    """True for a model that lives inside the package (never trained or written there)."""
    return Path(run_dir).resolve().parent == SHIPPED


@dataclass
class Run:
    """A loaded run: what sampling, evaluation, reports, serving and export read."""

    run_dir: Path
    config: RunConfig
    tokenizer: Tokenizer
    checkpoint: Checkpoint
    which: str

    @property
    def weights(self) -> dict[str, np.ndarray]:
        """The checkpoint's weights, by the stable names of ``textgen.weights``."""
        return self.checkpoint.weights

    @property
    def state(self) -> TrainState:
        """The training loop's position when the checkpoint was written."""
        return self.checkpoint.state

    def build_model(self):
        """A Keras model with this run's weights (imports TensorFlow)."""
        from textgen.model import model_from_config

        return model_from_config(self.config.model, self.weights)


def read_config(run_dir: Path) -> RunConfig:
    """Load ``config.json`` of a run directory, with errors a user can act on."""
    run_dir = resolve_run(run_dir)
    if not run_dir.exists():
        raise CheckpointError(f"no such run directory: {run_dir}")
    if not run_dir.is_dir():
        raise CheckpointError(f"{run_dir} is not a directory; expected a run directory")
    if not (run_dir / CONFIG).is_file():
        raise CheckpointError(f"{run_dir} is not a run directory (it has no {CONFIG})")
    try:
        data = json.loads((run_dir / CONFIG).read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise CheckpointError(f"{run_dir / CONFIG} is damaged: {err}") from None
    return RunConfig.from_json(data, str(run_dir / CONFIG))


def write_config(run_dir: Path, config: RunConfig) -> None:
    """Atomically write ``config.json``."""
    text = json.dumps(config.to_json(), indent=2, sort_keys=True) + "\n"
    write_text(Path(run_dir) / CONFIG, text)


def weights_file(run_dir: Path, which: str = "best") -> Path:
    """The checkpoint file for ``which``: ``best`` (falling back to latest) or ``latest``."""
    if which not in WHICH:
        raise TextgenError(f"which must be best or latest, got {which!r}")
    run_dir = resolve_run(run_dir)
    order = [BEST, LATEST] if which == "best" else [LATEST, BEST]
    for name in order:
        if (run_dir / name).is_file():
            return run_dir / name
    raise CheckpointError(f"{run_dir} has no checkpoint ({LATEST} or {BEST}); train it first")


def open_run(run_dir: str | os.PathLike, which: str = "best") -> Run:
    """Load a run directory's config, vocabulary and ``which`` checkpoint, checked together.

    ``run_dir`` may also name a shipped model (``resolve_run``).
    """
    run_dir = resolve_run(run_dir)
    return _checked_run(run_dir, read_config(run_dir), weights_file(run_dir, which), which)


def _checked_run(run_dir: Path, config: RunConfig, checkpoint_file: Path, which: str) -> Run:
    """The run's vocabulary and checkpoint with ``config``, refused if they do not fit."""
    tokenizer = Tokenizer.load(run_dir / TOKENIZER)
    checkpoint = load_checkpoint(checkpoint_file)
    try:
        check_weights(checkpoint.weights, config.model, tokenizer.vocab_size)
    except TextgenError as err:
        raise CheckpointError(f"{run_dir}: its files do not fit its config.json: {err}") from None
    return Run(run_dir, config, tokenizer, checkpoint, which)


# -- starting and resuming a run: what ``textgen.training.train.train`` does to the directory
# -------


def check_new_run(run_dir: Path) -> None:
    """Refuse to start a run where one already is."""
    if (Path(run_dir) / CONFIG).exists():
        raise CheckpointError(
            f"{run_dir} already holds a run; add --resume to continue it, or choose another "
            "--checkpoint-dir"
        )


def create_run(
    run_dir: Path, config: RunConfig, tokenizer: Tokenizer, first_checkpoint: Callable[[], None]
) -> None:
    """Write a new run's files in the order that keeps it resumable.

    The vocabulary, then the step-0 checkpoint (``first_checkpoint`` writes it), then
    ``config.json``: a directory with a config always has a checkpoint to resume from, even if
    the process is killed before the first save.
    """
    tokenizer.save(Path(run_dir) / TOKENIZER)
    first_checkpoint()
    write_config(run_dir, config)


def resume_run(run_dir: Path, settings: dict[str, Any]) -> Run:
    """The run in ``run_dir`` to continue from its latest checkpoint, checked as ``open_run``
    checks a run, with this invocation's ``settings`` (fields of ``TrainConfig``) merged into
    its training settings.

    A new ``max_time`` for a run planned by its budget is that much more training time.

    Raises:
        CheckpointError: there is no run; a setting that fixes the network's shape or the data
            order differs (``LOCKED_ON_RESUME``); the files do not fit together.
    """
    run_dir = Path(run_dir)
    if not (run_dir / CONFIG).exists():
        raise CheckpointError(f"nothing to resume: {run_dir} holds no run")
    saved = read_config(run_dir)
    training = _resumed_settings(saved.training, settings, run_dir)
    training.validate()
    remove_stale_temporaries(run_dir)
    run = _checked_run(run_dir, replace(saved, training=training), run_dir / LATEST, "latest")
    if training.budget_is_plan and "max_time" in settings:
        training.max_time = run.state.seconds + settings["max_time"]
    return run


def _resumed_settings(saved: TrainConfig, settings: dict, run_dir: Path) -> TrainConfig:
    """The saved settings with this invocation's changes, refusing shape and order changes."""
    TrainConfig.from_settings(settings)  # unknown keys fail here
    for key in LOCKED_ON_RESUME:
        if key in settings and settings[key] != getattr(saved, key):
            raise CheckpointError(
                f"cannot resume {run_dir} with {key}={settings[key]!r}: the run was trained with "
                f"{key}={getattr(saved, key)!r}"
            )
    return replace(saved, **settings)


def is_run_dir(path: Path) -> bool:
    """True when ``path`` looks like a run directory (it has a config and a checkpoint)."""
    path = Path(path)
    return (path / CONFIG).is_file() and ((path / LATEST).is_file() or (path / BEST).is_file())


def find_latest_run(root: Path = DEFAULT_ROOT) -> Path:
    """The most recently updated run directory under ``root``."""
    root = Path(root)
    runs = [p for p in root.iterdir() if is_run_dir(p)] if root.is_dir() else []
    if not runs:
        raise CheckpointError(
            f"no trained runs under {root}/; train one with `textgen train` or pass --checkpoint"
        )
    return max(runs, key=lambda p: max(f.stat().st_mtime for f in p.iterdir()))


def read_history(run_dir: Path) -> list[dict[str, str]]:
    """The rows of ``history.csv`` (none when the run has not finished an epoch)."""
    path = Path(run_dir) / HISTORY
    if not path.exists():
        return []
    return list(csv.DictReader(io.StringIO(path.read_text(encoding="utf-8"))))


def write_history(run_dir: Path, rows: list[dict], fields: list[str]) -> None:
    """Atomically replace ``history.csv`` with ``rows``."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fields, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text(Path(run_dir) / HISTORY, out.getvalue())


def ensure_writable(run_dir: Path) -> None:
    """Create ``run_dir`` if needed and prove it can be written, before any training starts."""
    run_dir = Path(run_dir)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-test.", dir=run_dir)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise CheckpointError(f"cannot write to {run_dir}: {err.strerror}") from None


@contextlib.contextmanager
def writer_lock(run_dir: Path) -> Iterator[None]:
    """Hold the run directory's lock: one process at a time may write a run.

    The lock is ``filelock``'s native lock on ``.lock`` (``flock`` on Linux and macOS, a
    ``msvcrt`` byte lock on Windows), which the operating system releases when the holder exits,
    so a killed trainer never blocks the next ``--resume``. The holder's pid goes into
    ``.lock.pid`` beside it (not into the lock file, whose contents belong to ``filelock``; a
    Windows lock also keeps other processes from reading it) for the message another trainer
    gets.

    Raises:
        CheckpointError: another process holds the lock.
        StorageError: the lock file cannot be made.
    """
    run_dir = Path(run_dir)
    lock = FileLock(str(run_dir / LOCK), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise CheckpointError(
            f"{run_dir} is being trained by another process (pid {lock_holder(run_dir)}); wait "
            "for it to finish or choose another --checkpoint-dir"
        ) from None
    except OSError as err:
        raise StorageError(f"cannot write to {run_dir}: {err.strerror or err}") from None
    holder = run_dir / LOCK_HOLDER
    try:
        with contextlib.suppress(TextgenError):  # the pid is for messages only
            write_text(holder, f"{os.getpid()}\n")
        yield
    finally:
        # Removed while still holding the lock, so that it never deletes the next holder's pid.
        with contextlib.suppress(OSError):
            holder.unlink(missing_ok=True)
        lock.release()


@contextlib.contextmanager
def writing(run_dir: Path) -> Iterator[None]:
    """Own ``run_dir`` to train it: made and proved writable, then locked (``writer_lock``).

    A directory made here that holds no run when the block ends (a corpus or a setting failed)
    is removed again, lock files and all.
    """
    run_dir = Path(run_dir)
    created = not run_dir.exists()
    ensure_writable(run_dir)
    try:
        with writer_lock(run_dir):
            yield
    finally:
        if created and not (run_dir / CONFIG).exists():
            remove_lock_files(run_dir)
            with contextlib.suppress(OSError):
                run_dir.rmdir()


def lock_holder(run_dir: Path) -> str:
    """The pid recorded by the process that holds ``run_dir``'s lock, or ``"unknown"``."""
    try:
        text = (Path(run_dir) / LOCK_HOLDER).read_text(encoding="ascii", errors="replace")
    except OSError:
        return "unknown"
    return text.strip()[:32] or "unknown"


def remove_lock_files(run_dir: Path) -> None:
    """Delete the lock's files of a run that is not held (to leave no empty run behind)."""
    for name in (LOCK_HOLDER, LOCK):
        with contextlib.suppress(OSError):
            (Path(run_dir) / name).unlink(missing_ok=True)


def pack_run(run_dir: str | os.PathLike, dest: str | os.PathLike) -> Path:
    """Write a run's config, vocabulary and best weights, as float16, into ``dest``.

    This is how a shipped model is made: half the size of float32 weights, loaded back as
    float32 (``textgen.checkpoint``), with the training state kept for ``textgen info``.
    """
    run = open_run(run_dir, "best")
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    half = {name: value.astype(np.float16) for name, value in run.weights.items()}
    save_checkpoint(dest / BEST, Checkpoint(half, [], run.state))
    run.tokenizer.save(dest / TOKENIZER)
    write_config(dest, run.config)
    return dest
