"""Text generation by stepping recurrent cells one character at a time.

Two engines step the same weights with the same Keras cell semantics:

- ``"numpy"`` (the default): ``textgen.kernels``. Sampling spends its time in one small matrix
  product per character, where a TensorFlow call per step costs more in dispatch than in
  arithmetic; numpy also spares ``textgen sample`` the seconds of importing TensorFlow.
- ``"keras"``: real ``keras.layers.LSTMCell`` (``GRUCell``, ``SimpleRNNCell``) objects holding
  copies of the trained weights. It is the reference the numpy engine is tested against.

Sampling order: logits / temperature, then top-k keeps the k most likely characters, then top-p
keeps the smallest set of the remaining characters whose probability reaches p. Temperature 0
is greedy (argmax) and ignores top-k and top-p. The unknown id (``--max-vocab``) is never drawn.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from textgen import checkpoint as ckpt
from textgen.errors import CheckpointError, TextgenError
from textgen.tokenizer import Tokenizer

if TYPE_CHECKING:
    import keras

_CELL_OF_LAYER = {"LSTM": "lstm", "GRU": "gru", "SimpleRNN": "simple"}


def _num_layers(weights: dict[str, np.ndarray]) -> int:
    return sum(1 for name in weights if name.endswith("/recurrent_kernel"))


class KerasCellEngine:
    """Steps Keras recurrent cells that hold copies of the trained weights."""

    def __init__(self, weights: dict[str, np.ndarray], cell: str) -> None:
        from textgen.backend import keras

        cell_class = {
            "lstm": keras.layers.LSTMCell,
            "gru": keras.layers.GRUCell,
            "simple": keras.layers.SimpleRNNCell,
        }[cell]
        self.embedding = weights["embedding"]
        self.dense_kernel, self.dense_bias = weights["dense/kernel"], weights["dense/bias"]
        self.cells = []
        input_dim = self.embedding.shape[1]
        for i in range(_num_layers(weights)):
            units = weights[f"rnn_{i}/recurrent_kernel"].shape[0]
            layer = cell_class(units)
            layer.build((None, input_dim))
            layer.set_weights(
                [weights[f"rnn_{i}/{part}"] for part in ("kernel", "recurrent_kernel", "bias")]
            )
            self.cells.append(layer)
            input_dim = units
        self.states: list = []

    def reset(self, batch_size: int) -> None:
        """Zero the state of every cell for ``batch_size`` streams."""
        self.states = [
            [np.zeros((batch_size, cell.units), np.float32) for _ in range(len(cell.state_size))]
            if isinstance(cell.state_size, (list, tuple))
            else [np.zeros((batch_size, cell.units), np.float32)]
            for cell in self.cells
        ]

    def step(self, ids: np.ndarray) -> np.ndarray:
        """Feed one id per stream; return the next-character logits, shape (batch, vocab)."""
        x = self.embedding[ids]
        for i, cell in enumerate(self.cells):
            x, new_state = cell(x, self.states[i])
            self.states[i] = (
                list(new_state) if isinstance(new_state, (list, tuple)) else [new_state]
            )
        return np.asarray(x) @ self.dense_kernel + self.dense_bias


def _make_engine(weights: dict[str, np.ndarray], cell: str, engine: str):
    if engine == "keras":
        return KerasCellEngine(weights, cell)
    if engine == "numpy":
        from textgen.kernels import RecurrentStack

        return RecurrentStack(weights, cell)
    raise TextgenError(f"unknown engine {engine!r}; choose numpy or keras")


def check_sampling(temperature: float, top_k: int | None, top_p: float | None) -> None:
    """Raise TextgenError for sampling settings that make no sense."""
    if not math.isfinite(temperature) or temperature < 0:
        raise TextgenError(f"temperature must be a finite number >= 0, got {temperature}")
    if top_k is not None and top_k < 1:
        raise TextgenError(f"top-k must be at least 1, got {top_k}")
    if top_p is not None and not (0.0 < top_p <= 1.0):
        raise TextgenError(f"top-p must be in (0, 1], got {top_p}")


class _StopMatcher:
    """Finds stop strings in a growing text and holds back what might still become one."""

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = [s for s in stops if s]
        self.pending = ""
        self.done = False

    def feed(self, char: str) -> str:
        """Add one character; return the text that is now safe to emit."""
        if not self.stops:
            return char
        self.pending += char
        for stop in self.stops:
            at = self.pending.find(stop)
            if at >= 0:
                self.done = True
                out, self.pending = self.pending[:at], ""
                return out
        for i in range(len(self.pending)):
            tail = self.pending[i:]
            if any(stop.startswith(tail) for stop in self.stops):
                out, self.pending = self.pending[:i], tail
                return out
        out, self.pending = self.pending, ""
        return out

    def flush(self) -> str:
        out, self.pending = self.pending, ""
        return out


class Sampler:
    """Generates text from a trained model, one character at a time, keeping the cells' state.

    Args:
        model: a Keras model from ``build_model``, or its weights as from ``get_weights``.
        tokenizer: the vocabulary the model was trained with.
        cell: "lstm", "gru" or "simple"; inferred from a Keras model, required with weights.
        engine: "numpy" (fast, the default) or "keras" (Keras cells, the reference).
    """

    def __init__(
        self,
        model: keras.Model | dict[str, np.ndarray],
        tokenizer: Tokenizer,
        *,
        cell: str | None = None,
        engine: str = "numpy",
    ) -> None:
        if isinstance(model, dict):
            weights = model
            if cell is None:
                raise TextgenError("pass cell= when building a Sampler from weights")
        else:
            from textgen.model import get_weights

            weights = get_weights(model)
            cell = cell or _CELL_OF_LAYER.get(type(model.get_layer("rnn_0")).__name__)
        vocab = weights["dense/bias"].shape[0]
        if vocab != tokenizer.vocab_size:
            raise CheckpointError(
                f"the model has {vocab} outputs but the tokenizer {tokenizer.vocab_size} ids"
            )
        self.tokenizer = tokenizer
        self.cell = cell
        self.engine = _make_engine(weights, cell, engine)
        self.batch_size = 1
        self.reset()

    @classmethod
    def from_checkpoint(
        cls, run_dir: str | Path, *, which: str = "best", engine: str = "numpy"
    ) -> Sampler:
        """Load a run directory's vocabulary and weights (``best`` or ``latest``)."""
        run_dir = Path(run_dir)
        config = ckpt.read_config(run_dir)
        tokenizer = Tokenizer.load(run_dir / ckpt.TOKENIZER)
        saved = ckpt.load_checkpoint(ckpt.weights_file(run_dir, which))
        model = config["model"]
        try:
            _check_weights(saved.weights, model)
            return cls(saved.weights, tokenizer, cell=model["cell"], engine=engine)
        except (KeyError, ValueError, IndexError) as err:
            raise CheckpointError(
                f"{run_dir} holds weights that do not fit its config: {err}"
            ) from None

    # -- stepping ---------------------------------------------------------------------------
    def reset(self, batch_size: int = 1) -> None:
        """Zero the recurrent state for ``batch_size`` parallel streams."""
        self.batch_size = batch_size
        self.engine.reset(batch_size)

    def step(self, char_id: int) -> np.ndarray:
        """Feed one character id (one stream); return the next logits, shape (vocab_size,)."""
        if self.batch_size != 1:
            self.reset(1)
        return np.array(self.step_batch(np.array([char_id]))[0])

    def step_batch(self, ids: np.ndarray) -> np.ndarray:
        """Feed one id per stream; return logits of shape (streams, vocab_size).

        Raises:
            TextgenError: not one id per stream, or an id outside the vocabulary.
        """
        ids = np.asarray(ids, dtype=np.int64)
        vocab = self.tokenizer.vocab_size
        if ids.shape != (self.batch_size,):
            raise TextgenError(f"need one id per stream ({self.batch_size}), got shape {ids.shape}")
        if ids.min() < 0 or ids.max() >= vocab:
            raise TextgenError(f"ids must lie in [0, {vocab}), got {ids.min()}..{ids.max()}")
        return self.engine.step(ids)

    # -- generation -------------------------------------------------------------------------
    def _prime_ids(self, prime: str, drop_unknown: bool) -> np.ndarray:
        ids = self.tokenizer.encode(prime, drop_unknown=drop_unknown)
        if len(ids):
            return ids
        # With no prime the model still needs a first input: a newline reads as the start of
        # a fresh paragraph, which is where most text begins.
        for start in ("\n", " "):
            if start in self.tokenizer.chars:
                return self.tokenizer.encode(start)
        return np.zeros(1, dtype=np.int32)

    def _id_steps(
        self,
        num_samples: int,
        length: int | None,
        *,
        temperature: float = 1.0,
        prime: str = "",
        seed: int | None = None,
        top_k: int | None = None,
        top_p: float | None = None,
        drop_unknown: bool = False,
        first_sample: int = 0,
    ) -> Iterator[np.ndarray]:
        """Check the options now, then return an iterator of the drawn ids, shape
        (num_samples,), one array per generated character.

        The checks run before anything is generated so that a bad option or prime fails at the
        call, before a caller has printed anything (a generator would only fail when first
        advanced).
        """
        from textgen.kernels import LogExponentials, sample_ids

        check_sampling(temperature, top_k, top_p)
        if num_samples < 1:
            raise TextgenError(f"the number of samples must be at least 1, got {num_samples}")
        if length is not None and length < 0:
            raise TextgenError(f"length must be >= 0, got {length}")
        prime_ids = self._prime_ids(prime, drop_unknown)
        if seed is None:
            seed = int(np.random.SeedSequence().entropy % (2**63))
        # One generator per stream keeps each sample independent of the batch it ran in.
        rngs = [np.random.default_rng([seed, first_sample + i]) for i in range(num_samples)]
        vocab = self.tokenizer.vocab_size
        noise = LogExponentials(rngs[0] if num_samples == 1 else rngs, num_samples, vocab)
        unknown = self.tokenizer.unknown_id
        draw = partial(
            sample_ids,
            rng=noise,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            exclude=None if unknown is None else [unknown],
        )
        return self._draw(num_samples, length, prime_ids, draw)

    def _draw(
        self,
        num_samples: int,
        length: int | None,
        prime_ids: np.ndarray,
        draw: Callable[[np.ndarray], np.ndarray],
    ) -> Iterator[np.ndarray]:
        self.reset(num_samples)
        for char_id in prime_ids:
            logits = self.engine.step(np.full(num_samples, char_id, dtype=np.int64))
        produced = 0
        while length is None or produced < length:
            ids = draw(logits)
            produced += 1
            yield ids
            logits = self.engine.step(ids)  # drawn from the vocabulary: no checks needed

    def stream_batch(
        self, num_samples: int, length: int | None, *, stop: Sequence[str] = (), **options
    ) -> Iterator[list[str]]:
        """Yield, per step, the new text of each of ``num_samples`` streams (often "").

        Streams advance together as one batch. Stream i draws from its own generator seeded
        by (seed, i), so each is reproducible and the streams differ. ``length=None`` runs
        until the caller stops iterating. A stream that produces a stop string ends there
        (the stop string is not included); the batch ends when every stream has stopped.
        Options: ``temperature``, ``prime``, ``seed``, ``top_k``, ``top_p``, ``drop_unknown``,
        ``first_sample`` (stream i is then sample ``first_sample + i`` of a larger batch).
        Bad options and prime characters outside the vocabulary raise ``TextgenError`` here,
        at the call, not when iteration starts.
        """
        steps = self._id_steps(num_samples, length, **options)
        chars = self.tokenizer.chars
        if not any(stop):
            # Nothing can stop a stream early, so no per-stream bookkeeping is needed.
            return ([chars[i] for i in ids.tolist()] for ids in steps)
        return _until_stopped(steps, chars, [_StopMatcher(stop) for _ in range(num_samples)])

    def stream(self, length: int | None, **options) -> Iterator[str]:
        """Yield the text of one sample as it is produced (see ``stream_batch`` for options)."""
        return (pieces[0] for pieces in self.stream_batch(1, length, **options) if pieces[0])

    def generate(
        self,
        length: int,
        temperature: float = 1.0,
        prime: str = "",
        seed: int | None = None,
        **options,
    ) -> str:
        """Return ``length`` new characters after feeding ``prime`` (fewer if a stop string hits).

        Generation starts from a fresh state. Options: ``top_k``, ``top_p``, ``stop`` (strings
        that end the sample and are not included), ``drop_unknown`` (drop prime characters
        outside the vocabulary instead of raising). The same seed gives the same text.
        """
        options.update(temperature=temperature, prime=prime, seed=seed)
        return self.generate_batch(1, length, **options)[0]

    def generate_batch(
        self, num_samples: int, length: int, *, stop: Sequence[str] = (), **options
    ) -> list[str]:
        """Generate ``num_samples`` samples in one batch; returns one string per sample."""
        if stop:
            texts = [[] for _ in range(num_samples)]
            for pieces in self.stream_batch(num_samples, length, stop=stop, **options):
                for parts, piece in zip(texts, pieces):
                    parts.append(piece)
            return ["".join(parts) for parts in texts]
        steps = list(self._id_steps(num_samples, length, **options))
        if not steps:
            return [""] * num_samples
        ids = np.stack(steps, axis=1)  # (num_samples, length)
        return [self.tokenizer.decode(row) for row in ids]


def _until_stopped(
    steps: Iterator[np.ndarray], chars: Sequence[str], matchers: list[_StopMatcher]
) -> Iterator[list[str]]:
    """Per step, each stream's text so far not ruled out as the start of a stop string."""
    for ids in steps:
        yield ["" if m.done else m.feed(chars[i]) for m, i in zip(matchers, ids)]
        if all(m.done for m in matchers):
            return
    yield [m.flush() for m in matchers]


def _check_weights(weights: dict[str, np.ndarray], model: dict) -> None:
    """Raise ValueError unless the weights have the shapes the config describes."""
    vocab, emb, units = model["vocab_size"], model["embedding_dim"], model["units"]
    if weights["embedding"].shape != (vocab, emb):
        raise ValueError(f"embedding {weights['embedding'].shape} != {(vocab, emb)}")
    if weights["dense/kernel"].shape != (units, vocab):
        raise ValueError(f"dense kernel {weights['dense/kernel'].shape} != {(units, vocab)}")
    if _num_layers(weights) != model["num_layers"]:
        raise ValueError(f"{_num_layers(weights)} layers != {model['num_layers']}")
    for i in range(model["num_layers"]):
        if weights[f"rnn_{i}/recurrent_kernel"].shape[0] != units:
            raise ValueError(f"layer {i} has the wrong number of units")
