"""Loss of a model on a text: validation during training and ``textgen eval``."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np

from textgen.config import DEFAULT_CONTEXT, TrainConfig
from textgen.errors import CorpusError
from textgen.tokenizer import Tokenizer
from textgen.training.distribute import LOCAL

LN2 = math.log(2.0)  # nats per bit: a loss in nats / LN2 is in bits per character


def describe_loss(loss: float | None) -> str:
    """A loss as people read it: ``1.2345 nats (1.7810 bpc)``, or ``n/a``."""
    return "n/a" if loss is None else f"{loss:.4f} nats ({loss / LN2:.4f} bpc)"


def build_eval_step(model, cluster=LOCAL, stock: bool = False) -> Callable:
    """The compiled step ``(x, y, first, scored) -> (summed loss, count)``.

    Row ``r`` scores ``scored`` positions from position ``first[r]`` (the batches of
    ``textgen.training.windows.validation_dataset``); the positions before are context only. On a
    ``textgen.training.distribute.Cluster``, this process's replicas split the batch's rows among
    them and the step returns their sums; ``evaluate_ids`` adds up the workers. ``stock`` is as in
    ``textgen.training.forward.make_forward``.
    """
    from textgen.backend import compiled, tf
    from textgen.training.forward import make_forward

    forward = make_forward(model, stock=stock)
    ids = tf.TensorSpec([None, None], tf.int32)
    spec = [ids, ids, tf.TensorSpec([None], tf.int32), tf.TensorSpec([], tf.int32)]

    @compiled(input_signature=spec)
    def eval_step(x, y, first, scored):
        logits = forward(x, training=False, seed=tf.zeros([2], tf.int32))
        losses = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=logits)
        positions = tf.range(tf.shape(x)[1])[tf.newaxis, :]
        start = first[:, tf.newaxis]
        mask = tf.cast((positions >= start) & (positions < start + scored), losses.dtype)
        return tf.reduce_sum(losses * mask), tf.reduce_sum(mask)

    return cluster.summed_over_replicas(eval_step, spec)


def evaluate_ids(
    step: Callable,
    ids: np.ndarray,
    seq_length: int,
    batch_size: int = 64,
    context: int = DEFAULT_CONTEXT,
    cluster=LOCAL,
) -> float:
    """Mean next-character loss in nats over ``ids``, every character scored once.

    ``step`` comes from :func:`build_eval_step`. Windows of ``seq_length`` are scored after up
    to ``context`` preceding characters (0: each window from a zero state). On a cluster of N
    workers (``textgen.training.distribute``, with its ``step``), worker k scores batches k, k + N,
    ... of the N workers whole, and the sums are added over the workers at the end: a step's cost
    hardly depends on its rows, so whole batches per worker validate nearly twice as fast on two
    workers as every batch split between them.
    """
    from textgen.training.windows import validation_dataset

    if len(ids) < 2:
        raise CorpusError("the text is too short to evaluate (it needs at least 2 characters)")
    seq_length = min(seq_length, len(ids) - 1)
    total, count = 0.0, 0.0
    for k, (x, y, first) in enumerate(validation_dataset(ids, seq_length, batch_size, context)):
        if k % cluster.workers != cluster.worker:
            continue
        loss_sum, n = step(x, y, first, seq_length)
        total += float(loss_sum)
        count += float(n)
    total, count = cluster.sum([np.array([total, count])])[0]
    return float(total / count)


def run_scorer(run_dir: Path, which: str = "best") -> tuple[Tokenizer, Callable, TrainConfig]:
    """A run's tokenizer, the eval step of its ``which`` weights, and its training settings."""
    from textgen.run import open_run

    run = open_run(run_dir, which)
    return run.tokenizer, build_eval_step(run.build_model()), run.config.training


def evaluate_file(
    run_dir: Path, text_file: str, *, which: str = "best", context: int | None = None
) -> float:
    """Loss in nats per character of a run's model on a text file (or any corpus spec).

    ``context`` defaults to the run's ``validation_context``, so the figure matches the
    validation loss that training reported.
    """
    from textgen.corpus import read_text

    tokenizer, step, training = run_scorer(run_dir, which)
    ids = tokenizer.encode(read_text(text_file))
    if context is None:
        context = training.validation_context
    return evaluate_ids(step, ids, training.seq_length, context=context)
