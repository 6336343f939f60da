"""Checkpoint files: weights, optimizer state and the training loop's position in one ``.npz``.

Checkpoints are plain, uncompressed ``.npz`` archives so that sampling loads them with numpy
alone, without paying for a TensorFlow import. Weights are stored as ``w/<name>`` under the
stable names of ``textgen.weights``, optimizer variables as ``opt/0000``, ..., the moving average
of the weights (when training keeps one, ``textgen.training.averaging``) as ``avg/<name>``, and the
loop state (``textgen.config.TrainState``) as JSON under ``state``.
"""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from textgen.config import TrainState
from textgen.errors import CheckpointError
from textgen.files import atomic_write


@dataclass
class Checkpoint:
    """The arrays and loop state stored in one checkpoint file."""

    weights: dict[str, np.ndarray]
    optimizer: list[np.ndarray] = field(default_factory=list)
    state: TrainState = field(default_factory=TrainState)
    average: dict[str, np.ndarray] = field(default_factory=dict)  # the weights' moving average


def save_checkpoint(path: Path, checkpoint: Checkpoint) -> None:
    """Atomically write a checkpoint (a failed write raises StorageError, the old file stays)."""
    arrays = {f"w/{name}": value for name, value in checkpoint.weights.items()}
    arrays.update({f"opt/{i:04d}": value for i, value in enumerate(checkpoint.optimizer)})
    arrays.update({f"avg/{name}": value for name, value in checkpoint.average.items()})
    arrays["state"] = np.array(json.dumps(checkpoint.state.to_json()))
    atomic_write(path, lambda f: np.savez(f, **arrays))


def load_checkpoint(path: Path) -> Checkpoint:
    """Read a checkpoint written by ``save_checkpoint``; a damaged file is a CheckpointError."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint file at {path}")
    try:
        with np.load(path, allow_pickle=False) as archive:
            weights, optimizer, average = {}, [], {}
            for key in sorted(archive.files):
                if key.startswith("w/"):
                    # A shipped model keeps its weights as float16; everything computes in 32.
                    weights[key[2:]] = archive[key].astype(np.float32, copy=False)
                elif key.startswith("opt/"):
                    optimizer.append(archive[key])
                elif key.startswith("avg/"):
                    average[key[4:]] = archive[key]
            state = TrainState.from_json(json.loads(str(archive["state"])))
    except (OSError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile) as err:
        raise CheckpointError(f"checkpoint {path} is damaged or not a checkpoint ({err})") from None
    if not weights:
        raise CheckpointError(f"checkpoint {path} holds no weights")
    return Checkpoint(weights, optimizer, state, average)
