"""Loss of a trained run on a text (``textgen eval``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from textgen import checkpoint as ckpt
from textgen.data import read_corpus
from textgen.errors import CorpusError
from textgen.tokenizer import Tokenizer


def evaluate_ids(model, ids: np.ndarray, seq_length: int = 100, batch_size: int = 64) -> float:
    """Mean next-character loss in nats over ``ids``, cut into consecutive windows."""
    from textgen.backend import tf
    from textgen.data import validation_dataset

    if len(ids) < 2:
        raise CorpusError("the text is too short to evaluate (it needs at least 2 characters)")
    seq_length = min(seq_length, len(ids) - 1)

    @tf.function
    def losses(x, y):
        logits = model(x, training=False)
        return tf.reduce_sum(
            tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=logits)
        ), tf.size(y)

    total, count = 0.0, 0
    for x, y in validation_dataset(ids, seq_length, batch_size):
        s, n = losses(x, y)
        total += float(s)
        count += int(n)
    return total / count


def evaluate_file(run_dir: Path, text_file: str, *, which: str = "best") -> float:
    """Loss in nats per character of a run's model on a text file."""
    from textgen.model import model_from_config

    config = ckpt.read_config(run_dir)
    tokenizer = Tokenizer.load(run_dir / ckpt.TOKENIZER)
    saved = ckpt.load_checkpoint(ckpt.weights_file(run_dir, which))
    text = read_corpus(text_file)
    ids = tokenizer.encode(text)
    model = model_from_config(config["model"], saved.weights)
    seq_length = config.get("training", {}).get("seq_length", 100)
    return evaluate_ids(model, ids, seq_length=seq_length)
