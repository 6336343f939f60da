"""textgen: train a character-level LSTM on any text and generate text in its style.

Importing the package is cheap: TensorFlow loads only when a model is built or trained.
"""

from textgen.errors import CheckpointError, CorpusError, TextgenError, VocabularyError
from textgen.model import build_model
from textgen.sampler import Sampler
from textgen.tokenizer import Tokenizer
from textgen.training import TrainConfig, TrainResult, train

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
__version__ = "0.1.0"
