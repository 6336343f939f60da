"""textgen: train a character-level LSTM on any text and generate text in its style.

Importing the package is cheap: names load on first use, so the command line can answer
``--help`` (and set up numpy's threads) before numpy or TensorFlow are imported.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

_EXPORTS = {
    "CheckpointError": "textgen.errors",
    "CorpusError": "textgen.errors",
    "TextgenError": "textgen.errors",
    "VocabularyError": "textgen.errors",
    "build_model": "textgen.model",
    "Sampler": "textgen.sampler",
    "Tokenizer": "textgen.tokenizer",
    "TrainConfig": "textgen.training",
    "TrainResult": "textgen.training",
    "train": "textgen.training",
}
__all__ = [
    "CheckpointError",
    "CorpusError",
    "Sampler",
    "TextgenError",
    "Tokenizer",
    "TrainConfig",
    "TrainResult",
    "VocabularyError",
    "build_model",
    "train",
]

if TYPE_CHECKING:
    from textgen.errors import CheckpointError, CorpusError, TextgenError, VocabularyError
    from textgen.model import build_model
    from textgen.sampler import Sampler
    from textgen.tokenizer import Tokenizer
    from textgen.training import TrainConfig, TrainResult, train


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'textgen' has no attribute {name!r}")
