"""Run directories: everything sampling and resuming need, written so a crash never loses a run.

Layout of a run directory::

    config.json      model and training settings (JSON)
    tokenizer.json   the vocabulary
    latest.npz       weights, optimizer state and loop position of the newest checkpoint
    best.npz         weights of the checkpoint with the lowest validation loss
    history.csv      one row per finished epoch

Every file is written to a temporary name in the same folder, flushed to disk, then renamed over
the old one, so a crash (even SIGKILL) during a save leaves the previous complete file in place.
Checkpoints are plain ``.npz`` archives so that sampling can load them with numpy alone, without
paying for a TensorFlow import.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import numpy as np

from textgen.errors import CheckpointError

CONFIG = "config.json"
TOKENIZER = "tokenizer.json"
LATEST = "latest.npz"
BEST = "best.npz"
HISTORY = "history.csv"
DEFAULT_ROOT = Path("checkpoints")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: Path, write: Callable[[IO[bytes]], None]) -> None:
    """Write ``path`` through ``write(file)`` so readers see the old or the new file, never half."""
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as err:
        raise CheckpointError(f"cannot write {path}: {err.strerror}") from None
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp's 0600 would hide the file from other users
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):  # make the rename itself durable
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def remove_stale_temporaries(run_dir: Path) -> None:
    """Delete half-written files that a killed process left behind (``.<name>.*.tmp``)."""
    for leftover in Path(run_dir).glob(".*.tmp"):
        with contextlib.suppress(OSError):
            leftover.unlink()


def write_text(path: Path, text: str) -> None:
    """Atomically write a UTF-8 text file."""
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))


@dataclass
class Checkpoint:
    """The arrays and loop state stored in one checkpoint file."""

    weights: dict[str, np.ndarray]
    optimizer: list[np.ndarray] = field(default_factory=list)
    state: dict = field(default_factory=dict)


def save_checkpoint(path: Path, checkpoint: Checkpoint) -> None:
    """Atomically write a checkpoint as an uncompressed ``.npz`` archive."""
    arrays = {f"w/{name}": value for name, value in checkpoint.weights.items()}
    arrays.update({f"opt/{i:04d}": value for i, value in enumerate(checkpoint.optimizer)})
    arrays["state"] = np.array(json.dumps(checkpoint.state))
    atomic_write(path, lambda f: np.savez(f, **arrays))


def load_checkpoint(path: Path) -> Checkpoint:
    """Read a checkpoint written by ``save_checkpoint``; a damaged file is a CheckpointError."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint file at {path}")
    try:
        with np.load(path, allow_pickle=False) as archive:
            weights, optimizer = {}, []
            for key in sorted(archive.files):
                if key.startswith("w/"):
                    weights[key[2:]] = archive[key]
                elif key.startswith("opt/"):
                    optimizer.append(archive[key])
            state = json.loads(str(archive["state"]))
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as err:
        raise CheckpointError(f"checkpoint {path} is damaged or not a checkpoint ({err})") from None
    if not weights:
        raise CheckpointError(f"checkpoint {path} holds no weights")
    return Checkpoint(weights, optimizer, state)


def is_run_dir(path: Path) -> bool:
    """True when ``path`` looks like a run directory (it has a config and a checkpoint)."""
    path = Path(path)
    return (path / CONFIG).is_file() and ((path / LATEST).is_file() or (path / BEST).is_file())


def read_config(run_dir: Path) -> dict:
    """Load ``config.json`` of a run directory, with errors a user can act on."""
    run_dir = Path(run_dir)
    if not run_dir.exists():
        raise CheckpointError(f"no such run directory: {run_dir}")
    if not run_dir.is_dir():
        raise CheckpointError(f"{run_dir} is not a directory; expected a run directory")
    if not (run_dir / CONFIG).is_file():
        raise CheckpointError(f"{run_dir} is not a run directory (it has no {CONFIG})")
    try:
        config = json.loads((run_dir / CONFIG).read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise CheckpointError(f"{run_dir / CONFIG} is damaged: {err}") from None
    if not isinstance(config, dict) or "model" not in config:
        raise CheckpointError(f"{run_dir / CONFIG} is not a textgen run config")
    return config


def write_config(run_dir: Path, config: dict) -> None:
    """Atomically write ``config.json``."""
    write_text(Path(run_dir) / CONFIG, json.dumps(config, indent=2, sort_keys=True) + "\n")


def weights_file(run_dir: Path, which: str = "best") -> Path:
    """The checkpoint to sample from: ``best`` (falling back to latest) or ``latest``."""
    run_dir = Path(run_dir)
    order = [BEST, LATEST] if which == "best" else [LATEST, BEST]
    for name in order:
        if (run_dir / name).is_file():
            return run_dir / name
    raise CheckpointError(f"{run_dir} has no checkpoint ({LATEST} or {BEST}); train it first")


def find_latest_run(root: Path = DEFAULT_ROOT) -> Path:
    """The most recently updated run directory under ``root``."""
    root = Path(root)
    runs = [p for p in root.iterdir() if is_run_dir(p)] if root.is_dir() else []
    if not runs:
        raise CheckpointError(
            f"no trained runs under {root}/; train one with `textgen train` or pass --checkpoint"
        )
    return max(runs, key=lambda p: max(f.stat().st_mtime for f in p.iterdir()))


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
