"""Continuous batching: all in-flight requests of a model advance one engine step per character.

A :class:`Job` is one prompt with ``n`` choices; each choice is a row of the engine's batch. A
:class:`Scheduler` owns one numpy ``RecurrentStack`` and runs it in its own thread, so that a web
server's event loop stays free to accept and stream. Between two steps, new jobs join: a short
prompt's rows join the batch at once in the zero state and are fed their prompt one character
per step alongside the others' draws (so a crowd of new requests costs a few batched steps, not
a few steps each); a long prompt is fed on its own, in chunks between two steps, and its rows
join when it is done. Rows that finished, stopped, timed out or were cancelled leave at once.

Each row has its own temperature, top-k, top-p, stop strings and generator. Row ``i`` of a job
with seed ``S`` draws from ``np.random.default_rng([S, i])``, consumed exactly as
``Sampler.draw_function`` consumes it (``vocab`` exponentials per drawn character, none when
greedy), so choice ``i`` equals sample ``i`` of ``textgen sample --num-samples n --seed S``
whatever else shares the batch. A job asked to ``score`` its choices sums each row's chosen
log-probabilities as ``Sampler.scored_batch`` does (for best-of).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from textgen.cells import get_cell
from textgen.draw import (
    LogExponentials,
    fill_log_exponentials,
    log_softmax,
    sample_ids,
    steps_ahead,
)
from textgen.errors import TextgenError
from textgen.options import SamplingOptions, random_seed
from textgen.sampler import Sampler, StopMatcher
from textgen.serve.limits import Limits

__all__ = ["Busy", "Job", "Piece", "Scheduler"]

# Prompts up to this many characters are fed inside the batch, one character per step; longer
# ones alone, PREFILL_CHUNK characters between two steps (about a millisecond per 10 characters
# for a 512-unit LSTM), which bounds how long they hold up the streams already running. A batch
# step costs a few single-stream steps, so in-batch feeding wins only for short prompts.
SHORT_PROMPT = 32
PREFILL_CHUNK = 128


class Busy(TextgenError):
    """The scheduler has no free rows for the job; try again later."""


@dataclass(slots=True)
class Piece:
    """New output of one choice: text, and when the choice ended, why (``"stop"``/``"length"``).

    ``logprobs`` (when asked for) holds one ``(char, logprob, {char: logprob} of the top
    alternatives)`` per character of ``text``. ``score`` (on a scored job's last piece) is the
    choice's mean log-probability per generated character, a stop string's included.
    """

    index: int
    text: str
    finish_reason: str | None = None
    logprobs: list[tuple[str, float, dict[str, float]]] | None = None
    score: float | None = None


class Job:
    """One prompt and the settings of its ``n`` choices; results arrive as :class:`Piece` lists.

    Args:
        prompt_ids: the ids fed before the first draw (at least one).
        n: choices, each a row of the batch drawing from ``default_rng([seed, i])``.
        max_tokens: characters per choice.
        seed: a non-negative integer; random when None.
        logprobs: how many top alternatives to report per character (None: no log-probabilities).
        timeout: seconds after submission when the job's rows leave, ending as ``"length"``.
        score: give each choice's last piece its ``score`` (for best-of).
    """

    def __init__(
        self,
        prompt_ids: np.ndarray,
        *,
        n: int = 1,
        max_tokens: int = 16,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        stop: Sequence[str] = (),
        seed: int | None = None,
        logprobs: int | None = None,
        timeout: float | None = None,
        score: bool = False,
    ) -> None:
        # The same checks, and messages, as every other way of sampling.
        SamplingOptions(temperature=temperature, top_k=top_k, top_p=top_p, stop=tuple(stop))
        if n < 1 or max_tokens < 0 or len(prompt_ids) == 0:
            raise TextgenError("a job needs n >= 1, max_tokens >= 0 and a non-empty prompt")
        if seed is None:
            seed = random_seed()
        if seed < 0:
            raise TextgenError(f"seed must be >= 0, got {seed}")
        self.prompt_ids = np.asarray(prompt_ids, dtype=np.int64)
        self.n, self.max_tokens, self.seed = n, max_tokens, seed
        self.draw_key = (float(temperature), top_k, top_p)
        self.stop = tuple(s for s in stop if s)
        self.logprobs, self.score = logprobs, score
        self.deadline = None if timeout is None else time.monotonic() + timeout
        self.on_ready: Callable[[], None] | None = None  # called (from the engine thread) when
        # pieces are waiting and nobody was told yet; a web server sets it to wake its loop.
        self.on_done: Callable[[], None] | None = None  # called once its last choice has ended
        # The engine appends and the reader pops without a lock: deque operations are atomic,
        # and a lock per character and row cost more than the rest of the row's work.
        self._pieces: deque[Piece] = deque()
        self._arrived = threading.Event()  # set when pieces arrive for a reader told of none
        self._told = False
        self._open = n  # choices not finished yet
        self.cancelled = False

    @property
    def done(self) -> bool:
        """True once every choice has finished (its last piece may still be waiting)."""
        return self._open == 0

    @property
    def drained(self) -> bool:
        """True once every choice has finished and every piece has been taken."""
        # The last piece is appended before ``_open`` drops, so this is never early.
        return self._open == 0 and not self._pieces

    def cancel(self) -> None:
        """Stop generating: the job's rows leave the batch before the next step."""
        self.cancelled = True

    def take(self, timeout: float | None = None) -> list[Piece]:
        """The pieces produced since the last call; waits up to ``timeout`` for at least one."""
        if not self._pieces and not self.done and timeout != 0:
            self._arrived.wait(timeout)
        # Reset before popping: a piece appended meanwhile either is popped now or tells anew.
        self._told = False
        if self._arrived.is_set():  # clearing takes a lock; most calls find it clear
            self._arrived.clear()
        pieces, pop = [], self._pieces.popleft
        with contextlib.suppress(IndexError):
            while True:
                pieces.append(pop())
        return pieces

    def _deliver(self, piece: Piece) -> None:
        self._pieces.append(piece)
        if piece.finish_reason is not None:
            self._open -= 1
            if self._open == 0 and self.on_done is not None:
                with contextlib.suppress(RuntimeError):  # the caller's loop has closed
                    self.on_done()
        if not self._told:
            self._told = True
            self._arrived.set()
            if self.on_ready is not None:
                # RuntimeError: the caller's event loop has closed, so nobody is listening.
                with contextlib.suppress(RuntimeError):
                    self.on_ready()


class _Drawn(LogExponentials):
    """Noise already drawn row by row, handed to ``sample_ids`` as one block."""

    def __init__(self, values: np.ndarray | None) -> None:
        self._values = values

    def next(self, batch: int, vocab: int) -> np.ndarray:
        return self._values


class _Noise:
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

    def take(self, slots: np.ndarray) -> np.ndarray:
        """The next step's noise of the rows in ``slots``, shape ``(len(slots), vocab)``."""
        if self._values is None:
            self._values = np.empty(self._shape, np.float32)
        block = self._shape[1]
        steps = self._next[slots]
        spent = steps == block
        if spent.any():
            for slot in slots[spent].tolist():
                fill_log_exponentials(self._gens[slot], self._values[slot])
            steps[spent] = 0
        self._next[slots] = steps + 1
        return self._values[slots, steps]


@dataclass
class _Row:
    job: Job
    index: int
    slot: int  # its noise slot
    matcher: StopMatcher | None
    plain: bool  # each character goes straight out: no stop strings, log-probabilities or score
    prompt: np.ndarray | None = None  # prompt ids still to feed inside the batch
    fed: int = 0
    produced: int = 0
    total: float = 0.0  # the chosen characters' log-probabilities, summed (scored jobs)
    held: list = field(default_factory=list)  # log-probability entries of held-back text
    done: bool = False


class Scheduler:
    """Runs all jobs of one model as one batch, in a background thread.

    Args:
        sampler: a numpy-engine :class:`~textgen.sampler.Sampler`; the scheduler takes over its
            engine (do not use the sampler elsewhere meanwhile).
        max_streams: rows (choices) admitted at once, queued or running; more raise :class:`Busy`.
        on_step: called with the batch size before every engine step (for tests and metrics).
    """

    def __init__(
        self,
        sampler: Sampler,
        *,
        max_streams: int = Limits.max_streams,
        on_step: Callable[[int], None] | None = None,
    ) -> None:
        if not hasattr(sampler.engine, "state"):
            raise TextgenError("serving needs the numpy engine")
        self.sampler, self.tokenizer = sampler, sampler.tokenizer
        self.max_streams, self.on_step = max_streams, on_step
        self._stack = sampler.engine
        self._state_size = get_cell(self._stack.cell).state_size  # h (and c) per layer
        self._chars = list(self.tokenizer.chars) + (["\ufffd"] if self.tokenizer.unknown else [])
        unknown = self.tokenizer.unknown_id
        self._exclude = None if unknown is None else [unknown]
        self._cond = threading.Condition()
        self._queue: list[Job] = []
        self._reserved = 0  # rows of jobs admitted and not finished
        self._active = 0  # rows in the running batch
        self._closing = False
        self._noise = _Noise(max_streams, len(self._chars))
        self._plan: tuple | None = None  # how the running rows draw; None when rows changed
        self._thread = threading.Thread(target=self._loop, name="textgen-batcher", daemon=True)
        self._thread.start()

    # -- client side ----------------------------------------------------------------------------
    @property
    def active_streams(self) -> int:
        """Rows in the running batch right now."""
        return self._active

    @property
    def reserved_streams(self) -> int:
        """Rows of every admitted job not finished yet, queued ones included."""
        return self._reserved

    def prompt_ids(self, prompt: str, drop_unknown: bool = False) -> np.ndarray:
        """The ids a prompt is fed as; an empty prompt starts as ``textgen sample`` does."""
        return self.sampler.prime_ids(prompt, drop_unknown)

    def submit(self, job: Job) -> Job:
        """Queue a job; its rows join the batch between two steps.

        Raises:
            Busy: fewer than ``job.n`` rows are free.
        """
        with self._cond:
            if self._closing:
                raise Busy("the server is shutting down")
            if self._reserved + job.n > self.max_streams:
                raise Busy(f"all {self.max_streams} streams are busy; try again shortly")
            self._reserved += job.n
            self._queue.append(job)
            self._cond.notify()
        return job

    def generate(self, job: Job, timeout: float = 60.0) -> list[str]:
        """Submit a job and wait for its texts, one per choice."""
        self.submit(job)
        texts = [[] for _ in range(job.n)]
        end = time.monotonic() + timeout
        while True:
            for piece in job.take(timeout=max(0.0, end - time.monotonic())):
                texts[piece.index].append(piece.text)
            if job.drained:
                return ["".join(t) for t in texts]
            if time.monotonic() > end:
                job.cancel()
                raise TimeoutError("the job did not finish in time")

    def close(self) -> None:
        """End every job now (its choices finish as ``"length"``) and stop the thread."""
        with self._cond:
            self._closing = True
            self._cond.notify()
        self._thread.join(timeout=10)

    # -- engine thread ----------------------------------------------------------------------
    def _loop(self) -> None:
        rows: list[_Row] = []
        logits = np.empty((0, self._stack.vocab_size), np.float32)
        prefill = None  # (job, ids fed so far, its state, its last logits) while feeding a prompt
        while True:
            with self._cond:
                while not rows and not self._queue and prefill is None and not self._closing:
                    self._cond.wait()
                if self._closing:
                    queued, self._queue = self._queue, []
                    break
                short = [job for job in self._queue if len(job.prompt_ids) <= SHORT_PROMPT]
                if short:
                    self._queue = [job for job in self._queue if len(job.prompt_ids) > SHORT_PROMPT]
            for job in short:
                rows, logits = self._join(job, None, None, rows, logits)
            if rows:
                ids = self._next_ids(rows, logits)
                keep = [i for i, row in enumerate(rows) if not row.done]
                if len(keep) < len(rows):
                    if keep:
                        self._stack.state = self._stack.state[:, :, keep]
                    for row in rows:
                        if row.done:
                            self._noise.close(row.slot)
                    rows, ids = [rows[i] for i in keep], ids[keep]
                    self._release(len(logits) - len(keep))
                    self._plan = None
                if rows:
                    if self.on_step is not None:
                        self.on_step(len(rows))
                    logits = self._stack.step(ids).copy()  # the engine reuses its buffer
                else:
                    logits = logits[:0]
            prefill = self._prefill(prefill, bool(rows))
            if prefill is not None and prefill[1] == len(prefill[0].prompt_ids):
                rows, logits = self._join(prefill[0], prefill[2], prefill[3], rows, logits)
                prefill = None
            self._active = len(rows)
        for row in rows:
            self._finish(row, "length")
            self._noise.close(row.slot)
        for job in queued:
            for i in range(job.n):
                job._deliver(Piece(i, "", "length"))
        self._active = 0

    def _next_ids(self, rows: list[_Row], logits: np.ndarray) -> np.ndarray:
        """Each row's next input: its next prompt id while feeding one, else a drawn id."""
        if self._plan is None:
            self._plan = self._make_plan(rows)
        feeding, live, groups = self._plan
        if not feeding:
            ids = self._draw(groups, logits, len(rows))
            self._emit(rows, ids, logits)
            return ids
        ids = np.empty(len(rows), np.int64)
        now = time.monotonic()
        for r in feeding:
            row = rows[r]
            job = row.job
            if job.cancelled or (job.deadline is not None and now > job.deadline):
                self._finish(row, "length")
                ids[r] = 0
                continue
            ids[r] = row.prompt[row.fed]
            row.fed += 1
        if live:
            drawing = [rows[r] for r in live]
            drawn = self._draw(groups, logits[live], len(live))
            self._emit(drawing, drawn, logits[live])
            ids[live] = drawn
        for r in feeding:
            row = rows[r]
            if row.fed == len(row.prompt):
                row.prompt = None  # the next step's logits are its first draw's
                self._plan = None
        return ids

    def _make_plan(self, rows: list[_Row]) -> tuple:
        """``(feeding rows, drawing rows, groups)``: a group is the drawing rows that share
        settings, as ``(settings, their places among the drawing rows, their noise slots)``."""
        feeding = [r for r, row in enumerate(rows) if row.prompt is not None]
        live = [r for r, row in enumerate(rows) if row.prompt is None]
        members: dict[tuple, list[int]] = {}
        for place, r in enumerate(live):
            members.setdefault(rows[r].job.draw_key, []).append(place)
        groups = [
            (key, np.array(places), np.array([rows[live[p]].slot for p in places]))
            for key, places in members.items()
        ]
        return feeding, live, groups

    def _draw(self, groups: list[tuple], logits: np.ndarray, count: int) -> np.ndarray:
        """One id per drawing row; each group at once, each row with its own noise."""
        if len(groups) == 1:  # the usual case: every row alike, no gathering
            (temperature, top_k, top_p), _, slots = groups[0]
            return self._sample(logits, temperature, top_k, top_p, slots)
        ids = np.empty(count, np.int64)
        for (temperature, top_k, top_p), places, slots in groups:
            ids[places] = self._sample(logits[places], temperature, top_k, top_p, slots)
        return ids

    def _sample(self, logits, temperature: float, top_k, top_p, slots: np.ndarray) -> np.ndarray:
        noise = self._noise.take(slots) if temperature > 0 else None  # greedy draws none
        return sample_ids(
            logits, _Drawn(noise), temperature=temperature, top_k=top_k, top_p=top_p,
            exclude=self._exclude,
        )  # fmt: skip

    def _prefill(self, current, running: bool):
        """Feed the next chunk of the job being prefilled (taking one from the queue if none)."""
        if current is None:
            with self._cond:
                while self._queue and current is None:
                    job = self._queue.pop(0)
                    if job.cancelled or job.max_tokens == 0:
                        self._reserved -= job.n
                        for i in range(job.n):
                            job._deliver(Piece(i, "", "length"))
                        continue
                    current = (job, 0, None, None)
            if current is None:
                return None
        job, fed, state, _ = current
        stack = self._stack
        # The running rows' state is set aside while the prompt is fed through the same stack.
        running = stack.state if running else None
        if state is None:
            stack.reset(1)
        else:
            stack.state = state
        end = min(len(job.prompt_ids), fed + PREFILL_CHUNK)
        last = stack.feed(job.prompt_ids[None, fed:end]).copy()
        state = stack.state
        if running is not None:
            stack.state = running
        return (job, end, state, last)

    def _join(self, job: Job, state, last, rows, logits):
        """Add a job's rows to the batch, all from the same state.

        With ``state`` None the rows start in the zero state and feed the prompt themselves;
        otherwise the prompt was fed already and ``last`` holds its last logits.
        """
        if job.cancelled or job.max_tokens == 0:
            self._release(job.n)
            for i in range(job.n):
                job._deliver(Piece(i, "", "length"))
            return rows, logits
        new = []
        plain = not job.stop and job.logprobs is None and not job.score
        for i in range(job.n):
            gen = np.random.default_rng([job.seed, i])
            matcher = StopMatcher(job.stop) if job.stop else None
            row = _Row(job, i, self._noise.open(gen), matcher, plain)
            if state is None:
                row.prompt = job.prompt_ids
            new.append(row)
        if state is None:
            stack = self._stack
            state = np.zeros((stack.num_layers, self._state_size, 1, stack.units), np.float32)
            last = np.zeros((1, self._stack.vocab_size), np.float32)  # never drawn from
        fork = np.repeat(state, job.n, axis=2)
        if rows:
            self._stack.state = np.concatenate([self._stack.state, fork], axis=2)
        else:
            self._stack.state = fork
        logits = np.concatenate([logits, np.repeat(last, job.n, axis=0)])
        self._plan = None
        return rows + new, logits

    def _release(self, count: int) -> None:
        with self._cond:
            self._reserved -= count

    def _emit(self, rows: list[_Row], ids: np.ndarray, logits: np.ndarray) -> None:
        """Hand each row's new character to its job; mark rows that finished."""
        chars = self._chars
        now = time.monotonic()
        logp = None
        for r, (row, char_id) in enumerate(zip(rows, ids.tolist())):
            job = row.job
            if job.cancelled or (job.deadline is not None and now > job.deadline):
                self._finish(row, "length")
                continue
            char = chars[char_id]
            row.produced += 1
            if row.plain:  # most rows: the character goes straight out
                if row.produced >= job.max_tokens:
                    self._finish(row, "length", char)
                else:
                    job._deliver(Piece(row.index, char))
                continue
            if logp is None and (job.logprobs is not None or job.score):
                logp = log_softmax(logits)
            if job.score:
                row.total += float(logp[r, char_id])
            if job.logprobs is not None:
                top = np.argsort(-logp[r])[: job.logprobs]
                alternatives = {chars[t]: float(logp[r, t]) for t in top.tolist()}
                row.held.append((char, float(logp[r, char_id]), alternatives))
            if row.matcher is None:
                text = char
            else:
                text = row.matcher.feed(char)
                if row.matcher.done:
                    self._finish(row, "stop", text)
                    continue
            if row.produced >= job.max_tokens:
                self._finish(row, "length", text)
            elif text:
                job._deliver(Piece(row.index, text, None, self._logprobs_for(row, text)))

    def _finish(self, row: _Row, reason: str, text: str = "") -> None:
        if reason == "length" and row.matcher is not None:
            text += row.matcher.flush()
        row.done = True
        score = None
        if row.job.score:
            score = row.total / row.produced if row.produced else 0.0
        row.job._deliver(Piece(row.index, text, reason, self._logprobs_for(row, text), score))

    @staticmethod
    def _logprobs_for(row: _Row, text: str):
        if row.job.logprobs is None:
            return None
        # One entry per character: released text takes the oldest held entries.
        entries, row.held = row.held[: len(text)], row.held[len(text) :]
        return entries
