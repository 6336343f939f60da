"""The one generation loop's core: rows of a batch, each drawing by its own options.

``Sampler`` drives it in the caller's thread and the server's ``Scheduler`` in its engine thread,
so seeding, the draw, stop strings, scores and log-probabilities are written once. It knows
nothing of engines: a driver feeds the engine, keeps the engine's state rows in the order of its
list of :class:`Row`, and hands each step's logits here.

Row ``i`` of a sample with seed ``S`` draws from ``np.random.default_rng([S, i])``, ``vocab``
exponentials per drawn character and none when greedy, so its text does not depend on which
other rows share the batch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from typing import NamedTuple

import numpy as np

from textgen.sample.draw import (
    LogExponentials,
    fill_log_exponentials,
    log_softmax,
    sample_ids,
    steps_ahead,
)
from textgen.sample.options import SamplingOptions, random_seed
from textgen.tokenizer import UNKNOWN_CHAR, Tokenizer

__all__ = ["Batch", "Piece", "Row", "ScoredText", "StopMatcher", "resolve_seed"]


def resolve_seed(seed: int | None) -> int:
    """``seed``, or a fresh random one when None (every row of one sample shares it)."""
    return random_seed() if seed is None else seed


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


class ScoredText(NamedTuple):
    """A continuation and its score: the mean log-probability per generated character."""

    text: str
    score: float


@dataclass(slots=True)
class Piece:
    """New output of one row: text, and when the row ended, why (``"stop"``/``"length"``).

    ``logprobs`` (when asked for) holds one ``(char, logprob, {char: logprob} of the top
    alternatives)`` per character of ``text``. ``score`` (on a scored row's last piece) is the
    row's mean log-probability per generated character, a stop string's included.
    """

    index: int
    text: str
    finish_reason: str | None = None
    logprobs: list[tuple[str, float, dict[str, float]]] | None = None
    score: float | None = None


@dataclass(eq=False, slots=True)
class Row:
    """One sample being generated: how it draws, where its output goes, what it has made."""

    index: int  # its place among its caller's samples, as its pieces report it
    slot: int  # its noise slot
    draw: SamplingOptions  # the draw settings alone: rows with equal ones draw together
    deliver: Callable[[Piece], None]
    matcher: StopMatcher | None
    max_tokens: int | None  # None: until its driver ends it
    logprobs: int | None  # top alternatives to report per character; None for none
    score: bool
    plain: bool  # each character goes straight out: no stop strings, log-probabilities or score
    owner: object = None  # the driver's own handle (the server's job)
    prompt: np.ndarray | None = None  # prompt ids still to feed inside the batch
    fed: int = 0
    produced: int = 0
    total: float = 0.0  # the chosen characters' log-probabilities, summed (scored rows)
    held: list = field(default_factory=list)  # log-probability entries of held-back text
    done: bool = False


class _Drawn(LogExponentials):
    """Noise already drawn row by row, handed to ``sample_ids`` as one block."""

    def __init__(self, values: np.ndarray | None) -> None:
        self._values = values

    def next(self, batch: int, vocab: int) -> np.ndarray:
        return self._values


_GREEDY = _Drawn(None)


class Noise:
    """Every row's own ``log(E)`` noise in one array, ``block`` steps drawn ahead per row.

    A row keeps its slot while it lives, so rows leaving cost nothing, and :meth:`take` gathers
    one step of many rows in one indexing instead of a call per row. Each row's Generator is
    consumed exactly as ``LogExponentials(gen, 1, vocab)`` consumes it, so the ids are the same.
    """

    def __init__(self, slots: int, vocab: int) -> None:
        block = steps_ahead(slots, vocab)
        self._shape = (slots, block, vocab)
        self._values: np.ndarray | None = None  # allocated on first use: greedy never draws
        self._next = np.full(slots, block)
        self._gens: list[np.random.Generator | None] = [None] * slots
        self._free = list(range(slots - 1, -1, -1))

    def open(self, gen: np.random.Generator) -> int:
        """A slot for a new row drawing from ``gen``."""
        slot = self._free.pop()
        self._gens[slot], self._next[slot] = gen, self._shape[1]
        return slot

    def close(self, slot: int) -> None:
        """Free a row's slot."""
        self._gens[slot] = None
        self._free.append(slot)

    def block(self, slots: np.ndarray) -> LogExponentials:
        """The noise of rows in lockstep, as one ``LogExponentials`` over their Generators.

        For rows opened before the first draw, all drawn at every step and none closed; it
        fills the values :meth:`take` would, in the same order, without gathering (a lone
        stream's character is the hot path). Use one or the other for a set of rows, not both.
        """
        gens = [self._gens[slot] for slot in slots.tolist()]
        vocab, block = self._shape[2], self._shape[1]
        return LogExponentials(gens[0] if len(gens) == 1 else gens, len(gens), vocab, block)

    def take(self, slots: np.ndarray) -> np.ndarray:
        """The next step's noise of the rows in ``slots``, shape ``(len(slots), vocab)``."""
        if self._values is None:
            self._values = np.empty(self._shape, np.float32)
        block = self._shape[1]
        if len(slots) == 1:
            # A lone row (one stream, one request) is the latency case: scalar bookkeeping and
            # a view cost a tenth of the gathering below.
            slot = int(slots[0])
            step = int(self._next[slot])
            if step == block:
                fill_log_exponentials(self._gens[slot], self._values[slot])
                step = 0
            self._next[slot] = step + 1
            return self._values[slot, step : step + 1]
        steps = self._next[slots]
        spent = steps == block
        if spent.any():
            for slot in slots[spent].tolist():
                fill_log_exponentials(self._gens[slot], self._values[slot])
            steps[spent] = 0
        self._next[slots] = steps + 1
        return self._values[slots, steps]


class Batch:
    """The rows generating together: their noise, their draw, and what each one emits.

    The driver keeps the list of rows (in the order of the engine's state rows), passes it to
    every call, and tells the batch through :meth:`add` and :meth:`remove` when it changes.

    Args:
        tokenizer: the vocabulary; its unknown id is never drawn and decodes to U+FFFD.
        capacity: rows alive at once.
        lockstep: every row is added before the first draw, all draw at every step and none
            leaves (``Sampler``'s batches); rows that also draw alike then take their noise as
            one block, the same values without per-row bookkeeping.
    """

    def __init__(self, tokenizer: Tokenizer, capacity: int, lockstep: bool = False) -> None:
        self.chars = list(tokenizer.chars) + ([UNKNOWN_CHAR] if tokenizer.unknown else [])
        unknown = tokenizer.unknown_id
        self.exclude = None if unknown is None else [unknown]
        self.noise = Noise(capacity, len(self.chars))
        self.lockstep = lockstep
        self._plan: tuple | None = None  # how the rows draw; None when rows changed

    def add(
        self,
        options: SamplingOptions,
        seed: int,
        index: int,
        deliver: Callable[[Piece], None],
        *,
        stream: int | None = None,
        max_tokens: int | None = None,
        logprobs: int | None = None,
        score: bool = False,
        prompt: np.ndarray | None = None,
        owner: object = None,
    ) -> Row:
        """A new row drawing from ``default_rng([seed, stream])`` (``stream`` defaults to
        ``index``); with ``prompt``, the row first feeds those ids inside the batch."""
        gen = np.random.default_rng([seed, index if stream is None else stream])
        # Only these fields shape the arithmetic of a draw; rows equal in them draw in one call.
        draw = replace(options, seed=None, prime="", drop_unknown=False, stop=())
        plain = not options.stop and logprobs is None and not score
        matcher = StopMatcher(options.stop) if options.stop else None
        self._plan = None
        return Row(
            index, self.noise.open(gen), draw, deliver, matcher, max_tokens, logprobs, score,
            plain, owner, prompt,
        )  # fmt: skip

    def remove(self, row: Row) -> None:
        """Free a row that left the driver's list."""
        self.noise.close(row.slot)
        self._plan = None

    def next_ids(self, rows: list[Row], logits: np.ndarray) -> np.ndarray:
        """Each row's next input: its next prompt id while feeding one, else a drawn id, which
        it emits (see :meth:`emit`). ``logits`` holds one row per row."""
        if self._plan is None:
            self._plan = self._make_plan(rows)
        feeding, live, groups, _ = self._plan
        if not feeding:
            ids = self._draw(groups, logits, len(rows))
            self.emit(rows, ids, logits)
            return ids
        ids = np.empty(len(rows), np.int64)
        for r in feeding:
            row = rows[r]
            if row.done:
                ids[r] = 0
                continue
            ids[r] = row.prompt[row.fed]
            row.fed += 1
        if live:
            drawing = [rows[r] for r in live]
            drawn = self._draw(groups, logits[live], len(live))
            self.emit(drawing, drawn, logits[live])
            ids[live] = drawn
        for r in feeding:
            row = rows[r]
            if row.fed == len(row.prompt):
                row.prompt = None  # the next step's logits are its first draw's
                self._plan = None
        return ids

    def draw(self, rows: list[Row], logits: np.ndarray) -> np.ndarray:
        """One drawn id per row (none feeding a prompt), emitting nothing."""
        if self._plan is None:
            self._plan = self._make_plan(rows)
        if self._plan[3] is not None:
            return self._plan[3](logits)
        return self._draw(self._plan[2], logits, len(rows))

    def _make_plan(self, rows: list[Row]) -> tuple:
        """``(feeding rows, drawing rows, groups, lone draw)``: a group is the drawing rows that
        share draw settings, as ``(settings, their places among the drawing rows, their slots)``;
        the lone draw, for rows in lockstep that all draw alike, is the whole step's draw as one
        call (a stream's character spends most of its time outside the matrix products)."""
        feeding = [r for r, row in enumerate(rows) if row.prompt is not None]
        live = [r for r, row in enumerate(rows) if row.prompt is None]
        members: dict[SamplingOptions, list[int]] = {}
        for place, r in enumerate(live):
            members.setdefault(rows[r].draw, []).append(place)
        groups = [
            (key, np.array(places), np.array([rows[live[p]].slot for p in places]))
            for key, places in members.items()
        ]
        lone = None
        if self.lockstep and len(groups) == 1 and not feeding:
            settings, _, slots = groups[0]
            lone = partial(
                sample_ids,
                rng=self.noise.block(slots) if settings.temperature > 0 else _GREEDY,
                temperature=settings.temperature, top_k=settings.top_k, top_p=settings.top_p,
                exclude=self.exclude,
            )  # fmt: skip
        return feeding, live, groups, lone

    def _draw(self, groups: list[tuple], logits: np.ndarray, count: int) -> np.ndarray:
        """One id per drawing row; each group at once, each row with its own noise."""
        if len(groups) == 1:  # the usual case: every row alike, no gathering
            settings, _, slots = groups[0]
            return self._sample(logits, settings, slots)
        ids = np.empty(count, np.int64)
        for settings, places, slots in groups:
            ids[places] = self._sample(logits[places], settings, slots)
        return ids

    def _sample(self, logits, settings: SamplingOptions, slots: np.ndarray) -> np.ndarray:
        temperature = settings.temperature
        noise = _Drawn(self.noise.take(slots)) if temperature > 0 else _GREEDY  # none if greedy
        return sample_ids(
            logits, noise, temperature=temperature, top_k=settings.top_k,
            top_p=settings.top_p, exclude=self.exclude,
        )  # fmt: skip

    def emit(self, rows: list[Row], ids: np.ndarray, logits: np.ndarray) -> None:
        """Hand each live row's new character to its ``deliver``; finish rows that end."""
        chars = self.chars
        logp = chosen = None
        for r, (row, char_id) in enumerate(zip(rows, ids.tolist())):
            if row.done:
                continue
            char = chars[char_id]
            row.produced += 1
            if row.plain:  # most rows: the character goes straight out
                if row.max_tokens is not None and row.produced >= row.max_tokens:
                    self.finish(row, "length", char)
                else:
                    row.deliver(Piece(row.index, char))
                continue
            if logp is None and (row.logprobs is not None or row.score):
                logp = log_softmax(logits)
                chosen = logp[np.arange(len(ids)), ids].tolist()  # one gather, not one a row
            if row.score:
                row.total += chosen[r]
            if row.logprobs is not None:
                top = np.argsort(-logp[r])[: row.logprobs]
                alternatives = {chars[t]: float(logp[r, t]) for t in top.tolist()}
                row.held.append((char, chosen[r], alternatives))
            if row.matcher is None:
                text = char
            else:
                text = row.matcher.feed(char)
                if row.matcher.done:
                    self.finish(row, "stop", text)
                    continue
            if row.max_tokens is not None and row.produced >= row.max_tokens:
                self.finish(row, "length", text)
            elif text:
                row.deliver(Piece(row.index, text, None, _logprobs_for(row, text)))

    @staticmethod
    def finish(row: Row, reason: str, text: str = "") -> None:
        """End a row: deliver ``text`` (and, ending by length, what its stop matcher held back)
        with ``reason`` and, for a scored row, its score."""
        if reason == "length" and row.matcher is not None:
            text += row.matcher.flush()
        row.done = True
        score = None
        if row.score:
            score = row.total / row.produced if row.produced else 0.0
        row.deliver(Piece(row.index, text, reason, _logprobs_for(row, text), score))


def _logprobs_for(row: Row, text: str):
    if row.logprobs is None:
        return None
    # One entry per character: released text takes the oldest held entries.
    entries, row.held = row.held[: len(text)], row.held[len(text) :]
    return entries
