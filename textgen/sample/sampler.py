"""Text generation by stepping recurrent cells one character at a time.

Two engines step the same weights with the same Keras cell semantics:

- ``"numpy"`` (the default): ``textgen.sample.engine``. Sampling spends its time in one small matrix
  product per character, where a TensorFlow call per step costs more in dispatch than in
  arithmetic; numpy also spares ``textgen sample`` the seconds of importing TensorFlow.
- ``"keras"``: real ``keras.layers.LSTMCell`` (``GRUCell``, ``SimpleRNNCell``) objects holding
  copies of the trained weights. It is the reference the numpy engine is tested against.

Sampling order: logits / temperature, then top-k keeps the k most likely characters, then top-p
keeps the smallest set of the remaining characters whose probability reaches p. Temperature 0
is greedy (argmax) and ignores top-k and top-p. The unknown id (``--max-vocab``) is never drawn.

Two ways of choosing among continuations rank them by one score, the mean log-probability per
generated character under the model's own distribution (natural log, temperature 1, whatever
temperature the sample was drawn at):

    score = (log p(c_1 | prime) + ... + log p(c_L | prime, c_1 .. c_L-1)) / L

L counts every generated character, those of a stop string that ended the text included (the
stop string is what the model chose to end with, though the returned text leaves it out); an
empty continuation scores 0. Dividing by L lets a text that stopped early compete with longer
ones; among texts of one length the score ranks as their total log-probability does.

- ``best_of=N`` (``generate``, ``generate_batch``) draws N samples, sample i exactly as
  ``generate_batch(N, ...)`` with the same seed draws it, and keeps the best-scoring ones.
- ``beam_search`` keeps the ``beam_width`` most likely partial texts of each length, one batch
  row each: every step extends every beam by every character, keeps the ``beam_width`` best
  extensions by total log-probability and reorders the engine's state rows by the beam each one
  extends. An extension that completes a stop string ends its beam (it joins the ended ones if it
  ranked among the best ``beam_width`` extensions of that step); the search ends when
  ``beam_width`` beams have ended or ``length`` characters are reached, and returns the ended
  beam with the best score. Width 1 is greedy sampling. Beam search draws no randomness, so
  temperature, top-k, top-p and the seed do not apply.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from textgen.cells import get_cell
from textgen.config import ModelConfig
from textgen.errors import TextgenError
from textgen.sample.generation import Batch, Piece, Row, ScoredText, resolve_seed
from textgen.sample.options import SamplingOptions, best_of_rows
from textgen.tokenizer import Tokenizer
from textgen.weights import check_weights, layer_arrays, shape_of

if TYPE_CHECKING:
    from textgen.backend import keras
    from textgen.run import Run


class KerasCellEngine:
    """Steps Keras recurrent cells that hold copies of the trained weights."""

    def __init__(self, weights: dict[str, np.ndarray], shape: ModelConfig) -> None:
        cell = get_cell(shape.cell)
        self.embedding = weights["embedding"]
        self.dense_kernel, self.dense_bias = weights["dense/kernel"], weights["dense/bias"]
        self.cells = []
        input_dim = shape.embedding_dim
        for i in range(shape.num_layers):
            layer = cell.cell_class()(shape.units)
            layer.build((None, input_dim))
            layer.set_weights(layer_arrays(weights, i))
            self.cells.append(layer)
            input_dim = shape.units
        self.state_size = cell.state_size
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


def _make_engine(weights: dict[str, np.ndarray], shape: ModelConfig, engine: str):
    """The engine that steps ``weights``, which were checked against ``shape``."""
    if engine == "keras":
        return KerasCellEngine(weights, shape)
    if engine == "numpy":
        from textgen.sample.engine import RecurrentStack

        return RecurrentStack(weights, shape)
    raise TextgenError(f"unknown engine {engine!r}; choose numpy or keras")


class Sampler:
    """Generates text from a trained model, one character at a time, keeping the cells' state.

    Args:
        model: a Keras model from ``build_model``, or its weights as from ``get_weights``.
        tokenizer: the vocabulary the model was trained with.
        cell: "lstm", "gru" or "simple", for weights without ``shape``: the rest of the shape
            is read from the weights.
        engine: "numpy" (fast, the default) or "keras" (Keras cells, the reference).
        shape: the network's shape (a run's ``config.model``), for weights; a Keras model
            gives its own.

    The weights and the vocabulary are checked against the shape once, here; a run's were
    checked when it was opened, so ``from_run`` does not check them again.

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
        shape: ModelConfig | None = None,
    ) -> None:
        if isinstance(model, dict):
            weights = model
            if shape is None:
                if cell is None:
                    raise TextgenError("pass cell= when building a Sampler from weights")
                shape = shape_of(weights, cell)
        else:
            from textgen.model import config_of, get_weights

            weights, shape = get_weights(model), config_of(model)
        check_weights(weights, shape, tokenizer.vocab_size)
        self._start_engine(weights, tokenizer, shape, engine)

    def _start_engine(
        self, weights: dict[str, np.ndarray], tokenizer: Tokenizer, shape: ModelConfig, engine: str
    ) -> None:
        self.tokenizer = tokenizer
        self.cell = shape.cell
        self.engine = _make_engine(weights, shape, engine)
        self.batch_size = 1
        self.reset()

    @classmethod
    def from_run(cls, run: Run, *, engine: str = "numpy") -> Sampler:
        """The sampler of a loaded run (``textgen.open_run``), in the shape of its config."""
        sampler = cls.__new__(cls)  # open_run has checked the weights and the vocabulary
        sampler._start_engine(run.weights, run.tokenizer, run.config.model, engine)
        return sampler

    @classmethod
    def from_checkpoint(
        cls, run_dir: str | Path, *, which: str = "best", engine: str = "numpy"
    ) -> Sampler:
        """Load a run directory's vocabulary and weights (``best`` or ``latest``)."""
        from textgen.run import open_run

        return cls.from_run(open_run(run_dir, which), engine=engine)

    # -- stepping ---------------------------------------------------------------------------
    def reset(self, batch_size: int = 1) -> None:
        """Zero the recurrent state for ``batch_size`` parallel streams."""
        self.batch_size = batch_size
        self.engine.reset(batch_size)

    def step(self, char_id: int) -> np.ndarray:
        """Feed one character id (one stream); return the next logits, shape (vocab_size,).

        Raises:
            TextgenError: the state holds several streams (after a batch); call ``reset(1)``.
        """
        if self.batch_size != 1:
            # Starting over silently would throw away the state the caller meant to continue.
            raise TextgenError(
                f"step feeds one stream but the state holds {self.batch_size}; "
                "call reset(1) first, or step_batch with one id per stream"
            )
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
        return prime_ids(self.tokenizer, prime, drop_unknown)

    def _start(
        self,
        num_samples: int,
        length: int | None,
        options: SamplingOptions,
        first_sample: int = 0,
        deliver: Callable[[Piece], None] | None = None,
        score: bool = False,
    ) -> tuple[Batch, list[Row], Iterator[tuple[np.ndarray, np.ndarray]]]:
        """Check the call now, then return the generation core's batch, its rows (sample
        ``first_sample + i`` in row i, its pieces going to ``deliver``), and an iterator of
        ``(drawn ids, the logits they were drawn from)``, one per character.

        The checks run before anything is generated so that a bad prime fails at the call,
        before a caller has printed anything (a generator would only fail when first advanced).
        """
        if num_samples < 1:
            raise TextgenError(f"the number of samples must be at least 1, got {num_samples}")
        if length is not None and length < 0:
            raise TextgenError(f"length must be >= 0, got {length}")
        prime_ids = self.prime_ids(options.prime, options.drop_unknown)
        seed = resolve_seed(options.seed)
        batch = Batch(self.tokenizer, num_samples, lockstep=True)
        rows = [
            batch.add(options, seed, i, deliver, stream=first_sample + i, score=score)
            for i in range(num_samples)
        ]
        return batch, rows, self._steps(batch, rows, length, prime_ids)

    def _steps(
        self, batch: Batch, rows: list[Row], length: int | None, prime_ids: np.ndarray
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        num_samples = len(rows)
        self.reset(num_samples)
        for char_id in prime_ids:
            logits = self.engine.step(np.full(num_samples, char_id, dtype=np.int64))
        produced = 0
        while length is None or produced < length:
            ids = batch.draw(rows, logits)
            produced += 1
            yield ids, logits
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
        latest: list[str] = [""] * num_samples  # each row's text of the current step

        def deliver(piece: Piece) -> None:
            latest[piece.index] = piece.text

        batch, rows, steps = self._start(num_samples, length, options, first_sample, deliver)
        chars = self.tokenizer.chars
        if not options.stop:
            # Nothing can stop a stream early, so the ids go straight to text.
            return ([chars[i] for i in ids.tolist()] for ids, _ in steps)
        return _until_stopped(batch, rows, latest, steps)

    def stream(
        self, length: int | None, *, options: SamplingOptions | None = None, **values
    ) -> Iterator[str]:
        """Yield the text of one sample as it is produced (see ``stream_batch``)."""
        pieces = self.stream_batch(1, length, options=options, **values)
        return (piece[0] for piece in pieces if piece[0])

    def generate(
        self,
        length: int,
        options: SamplingOptions | None = None,
        *,
        best_of: int | None = None,
        **values,
    ) -> str:
        """Return ``length`` new characters after feeding the prime (fewer if a stop string hits).

        Generation starts from a fresh state. The same seed gives the same text. With
        ``best_of=N``, N samples are drawn and the one with the best score is returned (see
        ``generate_batch``).
        """
        return self.generate_batch(1, length, options=options, best_of=best_of, **values)[0]

    def generate_batch(
        self,
        num_samples: int,
        length: int,
        *,
        options: SamplingOptions | None = None,
        best_of: int | None = None,
        **values,
    ) -> list[str]:
        """Generate ``num_samples`` samples in one batch; returns one string per sample.

        With ``best_of=N`` (at least ``num_samples``), N samples are drawn as
        ``scored_batch(N, ...)`` draws them and the ``num_samples`` with the highest mean
        log-probability per character are returned, best first (ties keep the sample order).

        Raises:
            TextgenError: bad options, or ``best_of`` smaller than ``num_samples``.
        """
        options = SamplingOptions.of(options, **values)
        if best_of is not None:
            best_of_rows(num_samples, best_of, ("best_of", "the number of samples"))
            scored = self.scored_batch(best_of, length, options=options)
            ranked = sorted(range(best_of), key=lambda i: -scored[i].score)
            return [scored[i].text for i in ranked[:num_samples]]
        if options.stop:
            texts = [[] for _ in range(num_samples)]
            for pieces in self.stream_batch(num_samples, length, options=options):
                for parts, piece in zip(texts, pieces):
                    parts.append(piece)
            return ["".join(parts) for parts in texts]
        steps = [ids for ids, _ in self._start(num_samples, length, options)[2]]
        if not steps:
            return [""] * num_samples
        ids = np.stack(steps, axis=1)  # (num_samples, length)
        return [self.tokenizer.decode(row) for row in ids]

    def scored_batch(
        self, num_samples: int, length: int, *, options: SamplingOptions | None = None, **values
    ) -> list[ScoredText]:
        """The samples of ``generate_batch(num_samples, length, ...)``, each with its score.

        The score is the mean log-probability of the sample's characters, a stop string's
        included (see the module's notes).
        """
        options = SamplingOptions.of(options, **values)
        parts: list[list[str]] = [[] for _ in range(num_samples)]
        scores = [0.0] * num_samples

        def deliver(piece: Piece) -> None:
            parts[piece.index].append(piece.text)
            if piece.finish_reason is not None:
                scores[piece.index] = piece.score

        batch, rows, steps = self._start(num_samples, length, options, 0, deliver, score=True)
        for ids, logits in steps:
            batch.emit(rows, ids, logits)
            if all(row.done for row in rows):
                break
        for row in rows:
            if not row.done:
                batch.finish(row, "length")
        return [ScoredText("".join(p), float(score)) for p, score in zip(parts, scores)]

    def beam_search(
        self,
        prime: str = "",
        length: int = 100,
        beam_width: int = 4,
        *,
        stop: Sequence[str] | str = (),
        drop_unknown: bool = False,
    ) -> ScoredText:
        """The most likely continuation of ``prime`` that a beam of ``beam_width`` finds.

        Returns the text (without a stop string that ended it) and its score, the mean
        log-probability per generated character; the search is described in the module's notes.
        Deterministic: the same call gives the same answer. Needs the numpy engine.

        Raises:
            TextgenError: a bad width, length, stop string or prime character.
        """
        from textgen.sample.beam import beam_search

        return beam_search(self, prime, length, beam_width, stop, drop_unknown)


def _until_stopped(
    batch: Batch, rows: list[Row], latest: list[str], steps: Iterator[tuple[np.ndarray, np.ndarray]]
) -> Iterator[list[str]]:
    """Per step, each stream's text so far not ruled out as the start of a stop string."""
    for ids, logits in steps:
        latest[:] = [""] * len(rows)
        batch.emit(rows, ids, logits)
        yield list(latest)
        if all(row.done for row in rows):
            return
    latest[:] = [""] * len(rows)
    for row in rows:
        if not row.done:
            batch.finish(row, "length")
    yield list(latest)


def prime_ids(tokenizer: Tokenizer, prime: str, drop_unknown: bool = False) -> np.ndarray:
    """The ids fed before a sample: the prime's, or a newline's when there is no prime."""
    ids = tokenizer.encode(prime, drop_unknown=drop_unknown)
    if len(ids):
        return ids
    # With no prime the model still needs a first input: a newline reads as the start of
    # a fresh paragraph, which is where most text begins.
    for start in ("\n", " "):
        if start in tokenizer.chars:
            return tokenizer.encode(start)
    return np.zeros(1, dtype=np.int32)
