"""What a model expects at every character, and which of its cells follow features of the text.

An :class:`Inspector` reads a text through the numpy engine (``textgen.sample.engine``, the one that
``textgen sample`` draws from) from a zero state, one character at a time, and hands out the
readings in blocks of consecutive characters: the probability the model gave each character
before reading it, its five likeliest guesses, and the chosen layer's state after reading it.
Blocks keep memory bounded however long the text is.

Alignment: the state of row ``t`` is the one after reading character ``t``; the probability of
character ``t`` is the softmax of the logits after characters ``0 .. t-1``. Nothing predicts
the first character from a zero state, so its probability is NaN and it has no guesses.

A :class:`Feature` gives every character a value after reading it (1 inside double quotes, the
position in the line, ...). :class:`CellRanking` correlates each feature with every cell's
activation over the text (Pearson's r, accumulated block by block) and ranks the cells by the
size of r, keeping its sign. For an LSTM both the hidden state ``h`` and the cell state ``c``
of each cell are ranked. This module must not import TensorFlow or Keras.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from textgen.cells import get_cell
from textgen.config import ModelConfig
from textgen.errors import TextgenError, VocabularyError
from textgen.sample.engine import RecurrentStack
from textgen.tokenizer import Tokenizer
from textgen.weights import check_weights, shape_of

__all__ = [
    "BUILTIN_FEATURES",
    "Block",
    "CellRanking",
    "CellScore",
    "Feature",
    "FeatureRanking",
    "Inspection",
    "Inspector",
    "inspect_text",
    "parse_feature",
]

TOP_GUESSES = 5
BLOCK_SIZE = 1024  # characters per block: about 4 MB of states for a 1x512 LSTM
BEST_CELLS = 5
# A cell (or feature) whose variance over the text is below this has no correlation to rank.
_FLAT = 1e-12


@dataclass(frozen=True)
class Block:
    """Readings of ``len(ids)`` consecutive characters, the first at index ``start``."""

    start: int
    ids: np.ndarray  # (b,) int32
    prob: np.ndarray  # (b,) float64: the probability the model gave each character; NaN first
    top_ids: np.ndarray  # (b, k) int64, likeliest first; -1 for the first character
    top_probs: np.ndarray  # (b, k) float64; NaN for the first character
    h: np.ndarray  # (b, units) float32: the layer's hidden state after each character
    c: np.ndarray | None  # (b, units) float32: the LSTM cell state after each character

    def __len__(self) -> int:
        return len(self.ids)


class Inspector:
    """Reads texts through a model's numpy engine and reports what it sees.

    Args:
        weights: name -> array dict as from ``textgen.model.get_weights`` or ``Run.weights``.
        tokenizer: the run's vocabulary.
        cell: the network's shape (a run's ``config.model``), or only its cell (``"lstm"``,
            ``"gru"`` or ``"simple"``) and the rest is read from the weights.

    An inspector owns one engine and reads one text at a time: two readings interleaved in one
    thread, or run from two threads, would step the same state.
    """

    def __init__(
        self, weights: Mapping[str, np.ndarray], tokenizer: Tokenizer, cell: ModelConfig | str
    ) -> None:
        shape = cell if isinstance(cell, ModelConfig) else shape_of(weights, cell)
        check_weights(weights, shape, tokenizer.vocab_size)
        self._start(RecurrentStack(weights, shape), tokenizer)

    def _start(self, stack: RecurrentStack, tokenizer: Tokenizer) -> None:
        self.stack, self.tokenizer, self.cell = stack, tokenizer, stack.cell

    @classmethod
    def from_run(cls, run_dir: str | Path, which: str = "best") -> Inspector:
        """The inspector of a run directory's ``best`` or ``latest`` weights."""
        from textgen.run import open_run

        run = open_run(run_dir, which)  # checks the weights and the vocabulary
        inspector = cls.__new__(cls)
        inspector._start(RecurrentStack(run.weights, run.config.model), run.tokenizer)
        return inspector

    @property
    def num_layers(self) -> int:
        """Recurrent layers in the model."""
        return self.stack.num_layers

    @property
    def units(self) -> int:
        """Cells per layer."""
        return self.stack.units

    @property
    def states(self) -> tuple[str, ...]:
        """The state vectors of a layer: ``("h", "c")`` for LSTM, ``("h",)`` otherwise."""
        return get_cell(self.cell).states

    def layer(self, layer: int | None) -> int:
        """``layer`` checked, counted from 0 at the input; None means the top layer.

        Raises:
            TextgenError: a layer the model does not have.
        """
        if layer is None:
            return self.num_layers - 1
        if not 0 <= layer < self.num_layers:
            top = self.num_layers - 1
            raise TextgenError(
                f"--layer must lie in 0..{top} (the model has {top + 1}), got {layer}"
            )
        return layer

    def encode(self, text: str, drop_unknown: bool = False) -> tuple[str, np.ndarray]:
        """The text as read (without dropped characters) and its ids.

        Characters outside the vocabulary take the unknown id when the run has one; otherwise
        they are dropped with ``drop_unknown``, or raise ``VocabularyError`` naming them.

        Raises:
            TextgenError: the text is empty (or nothing is left once unknown ones are dropped).
        """
        if not text:
            raise TextgenError("the text is empty: there is nothing to inspect")
        try:
            ids = self.tokenizer.encode(text, drop_unknown=drop_unknown)
        except VocabularyError as err:
            raise VocabularyError(f"{err} (drop them with --drop-unknown)") from None
        if len(ids) != len(text):  # dropped: keep the characters that were read
            known = set(self.tokenizer.chars)
            text = "".join(ch for ch in text if ch in known)
        if not len(ids):
            raise TextgenError("none of the text's characters is in the model's vocabulary")
        return text, ids

    def blocks(
        self, ids: np.ndarray, layer: int | None = None, block_size: int = BLOCK_SIZE
    ) -> Iterator[Block]:
        """Read ``ids`` from a zero state; yield the readings ``block_size`` characters at a time.

        The arrays of a block are its own (not reused by the next block).
        """
        layer = self.layer(layer)
        stack = self.stack
        stack.reset(1)
        h_view, c_view = stack.layer_views(layer)
        ids = np.asarray(ids, dtype=np.int64)
        if ids.ndim != 1 or (len(ids) and (ids.min() < 0 or ids.max() >= stack.vocab_size)):
            raise TextgenError(f"ids must be one sequence in [0, {stack.vocab_size})")
        carry = None  # the logits after the previous block's last character
        k = min(TOP_GUESSES, stack.vocab_size)
        for start in range(0, len(ids), block_size):
            chunk = ids[start : start + block_size]
            b = len(chunk)
            logits = np.empty((b, stack.vocab_size), np.float32)
            h = np.empty((b, stack.units), np.float32)
            c = None if c_view is None else np.empty((b, stack.units), np.float32)
            for t in range(b):
                logits[t] = stack.step(chunk[t : t + 1])[0]
                h[t] = h_view[:, 0]
                if c is not None:
                    c[t] = c_view[:, 0]
            # Row t's guess for its character came from the logits before it.
            before = np.empty((b, stack.vocab_size), np.float64)
            before[1:] = logits[:-1]
            before[0] = np.nan if carry is None else carry
            carry = logits[-1].copy()
            probs = _softmax(before)
            # A copy: a slice would keep the whole (b, vocab) ordering alive with the block.
            top_ids = np.argsort(-probs, axis=1, kind="stable")[:, :k].copy()
            top_probs = np.take_along_axis(probs, top_ids, axis=1)
            if start == 0:
                top_ids[0] = -1
            yield Block(
                start=start,
                ids=chunk.astype(np.int32),
                prob=probs[np.arange(b), chunk],
                top_ids=top_ids,
                top_probs=top_probs,
                h=h,
                c=c,
            )


def _softmax(logits: np.ndarray) -> np.ndarray:
    """Row softmax in float64 (NaN rows stay NaN)."""
    z = logits - np.max(logits, axis=1, keepdims=True)
    np.exp(z, out=z)
    z /= z.sum(axis=1, keepdims=True)
    return z


# -- features ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Feature:
    """A property of every character of a text, taken after reading it.

    ``values(text)`` gives one float per character; ``binary`` features are 1 "inside" and 0
    outside. ``pattern`` is the regular expression of a user's feature.
    """

    name: str
    description: str
    values: Callable[[str], np.ndarray] = field(repr=False)
    binary: bool = True
    pattern: str | None = None


def _points(text: str) -> np.ndarray:
    return np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)


def _inside_quotes(text: str) -> np.ndarray:
    # After an odd number of '"' the reader is inside: the opening quote counts as inside, the
    # closing one as outside, and a triple quote opens like a single one.
    return (np.cumsum(_points(text) == ord('"')) % 2).astype(np.float32)


def _inside_brackets(text: str) -> np.ndarray:
    p = _points(text)
    step = np.isin(p, [ord(c) for c in "([{"]).astype(np.int64)
    step -= np.isin(p, [ord(c) for c in ")]}"])
    # Depth with a floor at 0 (a stray closer does not make later text "outside" twice):
    # the running sum minus its lowest point so far.
    total = np.cumsum(step)
    depth = total - np.minimum.accumulate(np.minimum(total, 0))
    return (depth > 0).astype(np.float32)


def _line_position(text: str) -> np.ndarray:
    p = _points(text)
    index = np.arange(len(p))
    last_newline = np.maximum.accumulate(np.where(p == ord("\n"), index, -1))
    return (index - last_newline).astype(np.float32)  # a newline itself is position 0


def _indentation(text: str) -> np.ndarray:
    out = np.zeros(len(text), np.float32)
    at = 0
    for line in text.split("\n"):
        lead = len(line) - len(line.lstrip(" \t"))
        if lead:
            out[at : at + len(line)] = np.minimum(np.arange(1, len(line) + 1), lead)
        at += len(line) + 1  # the newline ends the line at indentation 0
    return out


def _matches(pattern: re.Pattern) -> Callable[[str], np.ndarray]:
    def values(text: str) -> np.ndarray:
        out = np.zeros(len(text), np.float32)
        for match in pattern.finditer(text):
            out[match.start() : match.end()] = 1.0
        return out

    return values


BUILTIN_FEATURES: tuple[Feature, ...] = (
    Feature("quotes", 'inside double quotes (after an odd number of ")', _inside_quotes),
    Feature("brackets", "inside (), [] or {}", _inside_brackets),
    Feature("line position", "characters since the last newline", _line_position, binary=False),
    Feature("indentation", "leading spaces of the current line", _indentation, binary=False),
    Feature("word", r"a word character (\w: letter, digit, _)", _matches(re.compile(r"\w+"))),
)


def parse_feature(spec: str) -> Feature:
    """A user's feature from ``NAME=REGEX``: the characters of the regex's matches are inside.

    The text is split at the first ``=``, so the name holds none and the regex may.

    Raises:
        TextgenError: no ``=``, an empty name or regex, or a regex that does not compile.
    """
    name, sep, pattern = spec.partition("=")
    name = name.strip()
    if not sep or not name or not pattern:
        raise TextgenError(f"a feature is NAME=REGEX, got {spec!r}")
    try:
        compiled = re.compile(pattern)
    except re.error as err:
        raise TextgenError(f"feature {name!r}: bad regular expression {pattern!r}: {err}") from None
    return Feature(name, f"matches of /{pattern}/", _matches(compiled), pattern=pattern)


# -- ranking -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class CellScore:
    """One cell's correlation with a feature: ``state`` is ``"h"`` or ``"c"``."""

    state: str
    cell: int
    score: float


@dataclass(frozen=True)
class FeatureRanking:
    """The cells that follow one feature best, by the size of their correlation."""

    feature: Feature
    inside: int | None  # characters inside (binary features); None for counts
    best: list[CellScore]
    note: str | None = None  # why nothing was ranked


class CellRanking:
    """Pearson correlations of features with cell activations, accumulated block by block.

    Each block's means and centred sums are merged into the totals (Chan, Golub and LeVeque's
    pairwise update), so long texts lose no precision to large sums and memory does not grow.
    """

    def __init__(self, num_features: int, columns: int) -> None:
        self.n = 0
        self._mean_f = np.zeros(num_features)
        self._mean_a = np.zeros(columns)
        self._m2_f = np.zeros(num_features)
        self._m2_a = np.zeros(columns)
        self._co = np.zeros((num_features, columns))

    def update(self, features: np.ndarray, activations: np.ndarray) -> None:
        """Add rows: ``features`` (b, num_features) and ``activations`` (b, columns)."""
        f = np.asarray(features, np.float64)
        a = np.asarray(activations, np.float64)
        b = len(f)
        if b == 0:
            return
        mean_f, mean_a = f.mean(axis=0), a.mean(axis=0)
        f = f - mean_f
        a = a - mean_a
        n = self.n + b
        weight = self.n * b / n
        d_f, d_a = mean_f - self._mean_f, mean_a - self._mean_a
        self._co += f.T @ a + np.outer(d_f, d_a) * weight
        self._m2_f += np.einsum("ij,ij->j", f, f) + d_f**2 * weight
        self._m2_a += np.einsum("ij,ij->j", a, a) + d_a**2 * weight
        self._mean_f += d_f * (b / n)
        self._mean_a += d_a * (b / n)
        self.n = n

    def correlations(self) -> np.ndarray:
        """Pearson's r, (num_features, columns); NaN where a feature or a cell is flat."""
        n = max(self.n, 1)
        flat_f = self._m2_f / n < _FLAT
        flat_a = self._m2_a / n < _FLAT
        with np.errstate(divide="ignore", invalid="ignore"):
            r = self._co / np.sqrt(np.outer(self._m2_f, self._m2_a))
        r[flat_f] = np.nan
        r[:, flat_a] = np.nan
        return np.clip(r, -1.0, 1.0)


@dataclass
class Inspection:
    """What :func:`inspect_text` found: the text read, the layer, and the ranked cells."""

    text: str
    layer: int
    rankings: list[FeatureRanking]
    correlations: np.ndarray  # (features, states * units); columns h 0.., then c 0..
    mean_surprise: float  # nats per character, over every character but the first


def feature_matrix(text: str, features: Sequence[Feature]) -> np.ndarray:
    """Every feature's values over ``text``, (characters, features) float32."""
    out = np.empty((len(text), len(features)), np.float32)
    for j, feature in enumerate(features):
        out[:, j] = feature.values(text)
    return out


def inspect_text(
    inspector: Inspector,
    text: str,
    *,
    layer: int | None = None,
    features: Iterable[Feature] | None = None,
    best: int = BEST_CELLS,
    drop_unknown: bool = False,
    on_block: Callable[[Block], None] | None = None,
    block_size: int = BLOCK_SIZE,
) -> Inspection:
    """Read ``text`` through the model and rank the layer's cells for each feature.

    Args:
        inspector: the model.
        text: what to read, from a zero state.
        layer: counted from 0 at the input; None: the top layer.
        features: what to rank cells for; None: :data:`BUILTIN_FEATURES`.
        best: cells kept per feature.
        drop_unknown: drop characters outside the vocabulary instead of failing.
        on_block: called with every :class:`Block` as it is read (to write it out, say).
        block_size: characters per block.

    Raises:
        TextgenError: an empty text, unknown characters, a layer the model lacks.
    """
    layer = inspector.layer(layer)
    features = list(BUILTIN_FEATURES if features is None else features)
    if best < 1:
        raise TextgenError(f"best must be at least 1, got {best}")
    text, ids = inspector.encode(text, drop_unknown)
    values = feature_matrix(text, features)
    ranking = CellRanking(len(features), len(inspector.states) * inspector.units)
    surprise, scored = 0.0, 0
    for block in inspector.blocks(ids, layer, block_size):
        states = block.h if block.c is None else np.concatenate([block.h, block.c], axis=1)
        ranking.update(values[block.start : block.start + len(block)], states)
        known = block.prob[~np.isnan(block.prob)]
        with np.errstate(divide="ignore"):
            surprise -= float(np.log(known).sum())
        scored += len(known)
        if on_block is not None:
            on_block(block)
    r = ranking.correlations()
    rankings = [
        _rank(feature, values[:, j], r[j], inspector, best) for j, feature in enumerate(features)
    ]
    return Inspection(
        text=text,
        layer=layer,
        rankings=rankings,
        correlations=r,
        mean_surprise=surprise / scored if scored else float("nan"),
    )


def _rank(
    feature: Feature, values: np.ndarray, r: np.ndarray, inspector: Inspector, best: int
) -> FeatureRanking:
    inside = int(np.count_nonzero(values)) if feature.binary else None
    if np.all(np.isnan(r)):
        why = "the text has too few characters" if len(values) < 2 else "it is constant here"
        if feature.binary and inside == 0:
            why = "no character of the text is inside"
        elif feature.binary and inside == len(values):
            why = "every character of the text is inside"
        return FeatureRanking(feature, inside, [], note=f"nothing ranked: {why}")
    order = np.argsort(-np.nan_to_num(np.abs(r), nan=-1.0), kind="stable")
    order = [j for j in order[:best] if not np.isnan(r[j])]
    units = inspector.units
    scores = [CellScore(inspector.states[j // units], int(j % units), float(r[j])) for j in order]
    return FeatureRanking(feature, inside, scores)
