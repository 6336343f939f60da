"""textgen: train a character-level LSTM on any text and generate text in its style.

Importing the package is cheap: names load on first use, so the command line can answer
``--help`` (and set up numpy's threads) before numpy or TensorFlow are imported.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

# The one place the version is written: pyproject.toml, `textgen --version` and the server
# read it from here.
__version__ = "0.1.0"

_EXPORTS = {
    "CheckpointError": "textgen.errors",
    "CorpusError": "textgen.errors",
    "StorageError": "textgen.errors",
    "ModelConfig": "textgen.config",
    "SamplingOptions": "textgen.sample.options",
    "open_run": "textgen.run",
    "TextgenError": "textgen.errors",
    "VocabularyError": "textgen.errors",
    "build_model": "textgen.model",
    "Sampler": "textgen.sample.sampler",
    "Tokenizer": "textgen.tokenizer",
    "Callback": "textgen.training.train",
    "TrainConfig": "textgen.config",
    "TrainResult": "textgen.training.train",
    "train": "textgen.training.train",
}
__all__ = [
    "Callback",
    "CheckpointError",
    "CorpusError",
    "ModelConfig",
    "Sampler",
    "SamplingOptions",
    "StorageError",
    "TextgenError",
    "Tokenizer",
    "TrainConfig",
    "TrainResult",
    "VocabularyError",
    "build_model",
    "open_run",
    "train",
]

if TYPE_CHECKING:
    from textgen.config import ModelConfig, TrainConfig
    from textgen.errors import (
        CheckpointError,
        CorpusError,
        StorageError,
        TextgenError,
        VocabularyError,
    )
    from textgen.model import build_model
    from textgen.run import open_run
    from textgen.sample.options import SamplingOptions
    from textgen.sample.sampler import Sampler
    from textgen.tokenizer import Tokenizer
    from textgen.training.train import Callback, TrainResult, train


def exports_on_first_use(package: str, exports: dict[str, str]):
    """A module ``__getattr__`` that imports each name of ``exports`` from its module when first
    asked for, so a package's front (this one, and each stage folder's) costs nothing to import."""

    def __getattr__(name: str):
        if name in exports:
            return getattr(importlib.import_module(exports[name]), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__


__getattr__ = exports_on_first_use(__name__, _EXPORTS)
