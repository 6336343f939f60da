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
    "SamplingOptions": "textgen.options",
    "open_run": "textgen.run",
    "TextgenError": "textgen.errors",
    "VocabularyError": "textgen.errors",
    "build_model": "textgen.model",
    "Sampler": "textgen.sampler",
    "Tokenizer": "textgen.tokenizer",
    "Callback": "textgen.training",
    "TrainConfig": "textgen.config",
    "TrainResult": "textgen.training",
    "train": "textgen.training",
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
    from textgen.options import SamplingOptions
    from textgen.run import open_run
    from textgen.sampler import Sampler
    from textgen.tokenizer import Tokenizer
    from textgen.training import Callback, TrainResult, train


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'textgen' has no attribute {name!r}")
