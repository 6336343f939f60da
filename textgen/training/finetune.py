"""Starting a run from a trained model: the source, the merged vocabulary and the first weights.

``textgen train CORPUS --init-from SOURCE`` continues a trained network (a run directory or a
shipped model such as ``base``) on a new text. The new run takes the source's shape; its
vocabulary is the source's, every character keeping its id, with the new text's other
characters appended (``Tokenizer.extended``). The weights of known characters are copied. A new
character starts with

- the mean of the source's embedding rows as its embedding (it reads as an average character),
- a zero output column and an output bias of ``log f + log Z``, where ``f`` is its frequency in
  the new text and ``log Z`` the source's mean log-normaliser over the start of that text: the
  model then gives it about its frequency everywhere, so the first steps do not pay a large
  loss for it, and learns its contexts from there.

The unknown id, when there is one, stays the last id; a source's unknown row moves with it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from textgen import run as rundir
from textgen.errors import CheckpointError, OptionsError, TextgenError
from textgen.tokenizer import Tokenizer

SHAPE_SETTINGS = {  # training setting -> ModelConfig field the source fixes
    "cell": "cell",
    "num_layers": "num_layers",
    "units": "units",
    "embedding_dim": "embedding_dim",
}
_FLAGS = {"cell": "--cell", "num_layers": "--layers", "units": "--units"}
_FLAGS["embedding_dim"] = "--embedding-dim"
_NORMALISER_CHARS = 2000  # characters of the new text read to estimate log Z


@dataclass
class Source:
    """A trained model to start from, loaded and checked."""

    spec: str  # as the user named it
    run: rundir.Run

    def record(self) -> dict:
        """What ``config.json`` keeps of the source, under ``init_from``."""
        return {
            "source": self.spec,
            "path": str(self.run.run_dir.resolve()),
            "corpus_sha256": self.run.config.corpus.get("sha256"),
            "shipped": rundir.is_shipped(self.run.run_dir),
            # The vocabulary the new run's was extended from, which its corpus hash depends on.
            "tokenizer": self.run.tokenizer.to_json(),
        }


def open_source(spec: str | os.PathLike) -> Source:
    """Load the run or shipped model named ``spec``; one-line errors for anything unusable."""
    path = rundir.resolve_run(spec)
    try:
        run = rundir.open_run(path, "best")
    except TextgenError as err:
        raise CheckpointError(f"cannot start from {spec}: {err}") from None
    if not rundir.is_shipped(path):
        try:
            with rundir.writer_lock(path):
                pass
        except CheckpointError:
            raise CheckpointError(
                f"cannot start from {spec}: it is being trained right now; wait for it to "
                "finish or start from a copy"
            ) from None
        except TextgenError:
            pass  # a folder nobody can write is a folder nobody is training
    return Source(str(spec), run)


def shape_settings(source: Source, settings: dict) -> dict:
    """The source's shape as training settings; an explicit setting that disagrees is refused."""
    model = source.run.config.model
    shape = {}
    for setting, field in SHAPE_SETTINGS.items():
        theirs = getattr(model, field)
        if setting in settings and settings[setting] != theirs:
            raise OptionsError(
                f"{_FLAGS[setting]} {settings[setting]} disagrees with {source.spec}, "
                f"a {model.num_layers}x{model.units} {model.cell} with embedding "
                f"{model.embedding_dim}: fine-tuning keeps the source's shape"
            )
        shape[setting] = theirs
    return shape


def transfer_weights(
    source: Source, tokenizer: Tokenizer, ids: np.ndarray
) -> dict[str, np.ndarray]:
    """The source's weights laid out for ``tokenizer`` (the source's, extended), as documented
    above; ``ids`` is the new corpus in ``tokenizer``'s ids."""
    old, weights = source.run.tokenizer, source.run.weights
    vocab = tokenizer.vocab_size
    if tokenizer.chars[: len(old.chars)] != old.chars:
        raise TextgenError("the vocabulary does not extend the source's")
    from_old = np.full(vocab, -1, dtype=np.int64)  # each id's row in the source, or -1
    from_old[: len(old.chars)] = np.arange(len(old.chars))
    if old.unknown and tokenizer.unknown:
        from_old[tokenizer.unknown_id] = old.unknown_id
    known = from_old >= 0
    new = ~known

    embedding = np.empty((vocab, weights["embedding"].shape[1]), np.float32)
    embedding[known] = weights["embedding"][from_old[known]]
    embedding[new] = weights["embedding"][: len(old.chars)].mean(axis=0)
    kernel = np.zeros((weights["dense/kernel"].shape[0], vocab), np.float32)
    kernel[:, known] = weights["dense/kernel"][:, from_old[known]]
    bias = np.empty(vocab, np.float32)
    bias[known] = weights["dense/bias"][from_old[known]]
    if new.any():
        counts = np.bincount(np.asarray(ids, dtype=np.int64), minlength=vocab)
        frequency = np.maximum(counts[new], 1) / max(len(ids), 1)
        bias[new] = np.log(frequency) + _log_normaliser(source, tokenizer, ids)
    out = dict(weights)
    out.update({"embedding": embedding, "dense/kernel": kernel, "dense/bias": bias})
    return out


def _log_normaliser(source: Source, tokenizer: Tokenizer, ids: np.ndarray) -> float:
    """The source model's mean log-sum-exp of its logits over the start of the new text."""
    from textgen.sample.sampler import Sampler

    run = source.run
    head = np.asarray(ids[: _NORMALISER_CHARS * 2], dtype=np.int64)
    head = head[head < len(run.tokenizer.chars)][:_NORMALISER_CHARS]  # the source's characters
    if len(head) == 0:
        return float(np.log(run.tokenizer.vocab_size))
    sampler = Sampler.from_run(run)
    sampler.reset(1)
    total = 0.0
    for char_id in head:
        logits = sampler.step_batch(np.array([char_id]))[0].astype(np.float64)
        top = logits.max()
        total += top + np.log(np.exp(logits - top).sum())
    return total / len(head)
