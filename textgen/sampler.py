"""Text generation by stepping recurrent cells one character at a time.

Two engines step the same weights with the same Keras cell semantics:

- ``"numpy"`` (the default): ``textgen.engine``. Sampling spends its time in one small matrix
  product per character, where a TensorFlow call per step costs more in dispatch than in
  arithmetic; numpy also spares ``textgen sample`` the seconds of importing TensorFlow.
- ``"keras"``: real ``keras.layers.LSTMCell`` (``GRUCell``, ``SimpleRNNCell``) objects holding
  copies of the trained weights. It is the reference the numpy engine is tested against.

Sampling order: logits / temperature, then top-k keeps the k most likely characters, then top-p
keeps the smallest set of the remaining characters whose probability reaches p. Temperature 0
is greedy (argmax) and ignores top-k and top-p. The unknown id (``--max-vocab``) is never drawn.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from textgen.cells import cell_of_layer, get_cell
from textgen.errors import CheckpointError, TextgenError
from textgen.model import num_layers_in, rnn_name
from textgen.options import SamplingOptions
from textgen.tokenizer import Tokenizer

if TYPE_CHECKING:
    from textgen.backend import keras


class KerasCellEngine:
    """Steps Keras recurrent cells that hold copies of the trained weights."""

    def __init__(self, weights: dict[str, np.ndarray], cell: str) -> None:
        cell_class = get_cell(cell).cell_class()
        self.embedding = weights["embedding"]
        self.dense_kernel, self.dense_bias = weights["dense/kernel"], weights["dense/bias"]
        self.cells = []
        input_dim = self.embedding.shape[1]
        for i in range(num_layers_in(weights)):
            name = rnn_name(i)
            units = weights[f"{name}/recurrent_kernel"].shape[0]
            layer = cell_class(units)
            layer.build((None, input_dim))
            layer.set_weights(
                [weights[f"{name}/{part}"] for part in ("kernel", "recurrent_kernel", "bias")]
            )
            self.cells.append(layer)
            input_dim = units
        self.state_size = get_cell(cell).state_size
        self.states: list = []

    def reset(self, batch_size: int) -> None:
        """Zero the state of every cell for ``batch_size`` streams."""
        self.states = [
            [np.zeros((batch_size, cell.units), np.float32) for _ in range(self.state_size)]
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
        from textgen.engine import RecurrentStack

        return RecurrentStack(weights, cell)
    raise TextgenError(f"unknown engine {engine!r}; choose numpy or keras")


class StopMatcher:
    """Finds stop strings in a growing text and holds back what might still become one."""

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = list(stops)
        self.pending = ""
        self.done = False

    def feed(self, char: str) -> str:
        """Add one character; return the text that is now safe to emit."""
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
        """The text held back when the sample ends without a stop."""
        out, self.pending = self.pending, ""
        return out


class Sampler:
    """Generates text from a trained model, one character at a time, keeping the cells' state.

    Args:
        model: a Keras model from ``build_model``, or its weights as from ``get_weights``.
        tokenizer: the vocabulary the model was trained with.
        cell: "lstm", "gru" or "simple"; inferred from a Keras model, required with weights.
        engine: "numpy" (fast, the default) or "keras" (Keras cells, the reference).

    Generation methods take the fields of ``SamplingOptions`` as keywords (``temperature``,
    ``top_k``, ``top_p``, ``seed``, ``prime``, ``drop_unknown``, ``stop``), or one
    ``options=SamplingOptions(...)``; they are checked at the call.
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
            from textgen.model import get_weights, recurrent_layers

            weights = get_weights(model)
            cell = cell or cell_of_layer(recurrent_layers(model)[0]).name
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
        from textgen.run import open_run

        run = open_run(run_dir, which)
        return cls(run.weights, run.tokenizer, cell=run.config.model.cell, engine=engine)

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
    def prime_ids(self, prime: str, drop_unknown: bool = False) -> np.ndarray:
        """The ids fed before a sample: the prime's, or a newline's when there is no prime."""
        ids = self.tokenizer.encode(prime, drop_unknown=drop_unknown)
        if len(ids):
            return ids
        # With no prime the model still needs a first input: a newline reads as the start of
        # a fresh paragraph, which is where most text begins.
        for start in ("\n", " "):
            if start in self.tokenizer.chars:
                return self.tokenizer.encode(start)
        return np.zeros(1, dtype=np.int32)

    def draw_function(
        self, options: SamplingOptions, num_samples: int, first: int = 0
    ) -> Callable[[np.ndarray], np.ndarray]:
        """The draw for streams ``first .. first + num_samples - 1`` of a sample with ``options``.

        Stream i draws from its own generator seeded with (seed, i), so its text does not
        depend on which other streams share the batch.
        """
        from textgen.draw import LogExponentials, sample_ids

        seed = options.seed
        if seed is None:
            seed = int(np.random.SeedSequence().entropy % (2**63))
        rngs = [np.random.default_rng([seed, i]) for i in range(first, first + num_samples)]
        vocab = self.tokenizer.vocab_size
        noise = LogExponentials(rngs[0] if num_samples == 1 else rngs, num_samples, vocab)
        unknown = self.tokenizer.unknown_id
        return partial(
            sample_ids,
            rng=noise,
            temperature=options.temperature,
            top_k=options.top_k,
            top_p=options.top_p,
            exclude=None if unknown is None else [unknown],
        )

    def _id_steps(
        self, num_samples: int, length: int | None, options: SamplingOptions, first_sample: int = 0
    ) -> Iterator[np.ndarray]:
        """Check the call now, then return an iterator of the drawn ids, shape (num_samples,),
        one array per generated character.

        The checks run before anything is generated so that a bad prime fails at the call,
        before a caller has printed anything (a generator would only fail when first advanced).
        """
        if num_samples < 1:
            raise TextgenError(f"the number of samples must be at least 1, got {num_samples}")
        if length is not None and length < 0:
            raise TextgenError(f"length must be >= 0, got {length}")
        prime_ids = self.prime_ids(options.prime, options.drop_unknown)
        draw = self.draw_function(options, num_samples, first_sample)
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
        self,
        num_samples: int,
        length: int | None,
        *,
        options: SamplingOptions | None = None,
        first_sample: int = 0,
        **values,
    ) -> Iterator[list[str]]:
        """Yield, per step, the new text of each of ``num_samples`` streams (often "").

        Streams advance together as one batch. ``length=None`` runs until the caller stops
        iterating. A stream that produces a stop string ends there (the stop string is not
        included); the batch ends when every stream has stopped. Bad options and prime
        characters outside the vocabulary raise ``TextgenError`` here, at the call. Stream i
        is sample ``first_sample + i`` of a larger batch, drawing from (seed, first_sample + i).
        """
        options = SamplingOptions.of(options, **values)
        steps = self._id_steps(num_samples, length, options, first_sample)
        chars = self.tokenizer.chars
        if not options.stop:
            # Nothing can stop a stream early, so no per-stream bookkeeping is needed.
            return ([chars[i] for i in ids.tolist()] for ids in steps)
        matchers = [StopMatcher(options.stop) for _ in range(num_samples)]
        return _until_stopped(steps, chars, matchers)

    def stream(
        self, length: int | None, *, options: SamplingOptions | None = None, **values
    ) -> Iterator[str]:
        """Yield the text of one sample as it is produced (see ``stream_batch``)."""
        pieces = self.stream_batch(1, length, options=options, **values)
        return (piece[0] for piece in pieces if piece[0])

    def generate(self, length: int, options: SamplingOptions | None = None, **values) -> str:
        """Return ``length`` new characters after feeding the prime (fewer if a stop string hits).

        Generation starts from a fresh state. The same seed gives the same text.
        """
        return self.generate_batch(1, length, options=options, **values)[0]

    def generate_batch(
        self, num_samples: int, length: int, *, options: SamplingOptions | None = None, **values
    ) -> list[str]:
        """Generate ``num_samples`` samples in one batch; returns one string per sample."""
        options = SamplingOptions.of(options, **values)
        if options.stop:
            texts = [[] for _ in range(num_samples)]
            for pieces in self.stream_batch(num_samples, length, options=options):
                for parts, piece in zip(texts, pieces):
                    parts.append(piece)
            return ["".join(parts) for parts in texts]
        steps = list(self._id_steps(num_samples, length, options))
        if not steps:
            return [""] * num_samples
        ids = np.stack(steps, axis=1)  # (num_samples, length)
        return [self.tokenizer.decode(row) for row in ids]


def _until_stopped(
    steps: Iterator[np.ndarray], chars: Sequence[str], matchers: list[StopMatcher]
) -> Iterator[list[str]]:
    """Per step, each stream's text so far not ruled out as the start of a stop string."""
    for ids in steps:
        yield ["" if m.done else m.feed(chars[i]) for m, i in zip(matchers, ids)]
        if all(m.done for m in matchers):
            return
    yield [m.flush() for m in matchers]
