"""Continuous batching: all in-flight requests of a model advance one engine step per character.

A :class:`Job` is one prompt with ``n`` choices; each choice is a row of the engine's batch. A
:class:`Scheduler` owns one numpy ``RecurrentStack`` and runs it in its own thread, so that a web
server's event loop stays free to accept and stream. Between two steps, new jobs join: a short
prompt's rows join the batch at once in the zero state and are fed their prompt one character
per step alongside the others' draws (so a crowd of new requests costs a few batched steps, not
a few steps each); a long prompt is fed on its own, in chunks between two steps, and its rows
join when it is done. Rows that finished, stopped, timed out or were cancelled leave at once.

Each row is a row of the generation core (``textgen.sample.generation.Batch``), the same one
``Sampler`` drives: row ``i`` of a job with seed ``S`` draws as sample ``i`` of
``textgen sample --num-samples n --seed S`` does, whatever else shares the batch, and a job asked
to ``score`` its choices is scored as ``Sampler.scored_batch`` scores them (for best-of).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import deque
from collections.abc import Callable

import numpy as np

from textgen.cells import get_cell
from textgen.errors import TextgenError
from textgen.sample.generation import Batch, Piece, Row, resolve_seed
from textgen.sample.options import SamplingOptions
from textgen.sample.sampler import Sampler, prime_ids
from textgen.serve.limits import Limits
from textgen.tokenizer import Tokenizer

__all__ = ["Busy", "Front", "Job", "Piece", "Scheduler"]

# Prompts up to this many characters are fed inside the batch, one character per step; longer
# ones alone, PREFILL_CHUNK characters between two steps (about a millisecond per 10 characters
# for a 512-unit LSTM), which bounds how long they hold up the streams already running. A batch
# step costs a few single-stream steps, so in-batch feeding wins only for short prompts.
SHORT_PROMPT = 32
PREFILL_CHUNK = 128


class Busy(TextgenError):
    """The scheduler has no free rows for the job; try again later."""


class Job:
    """One prompt and the settings of its ``n`` choices; results arrive as :class:`Piece` lists.

    Args:
        prompt_ids: the ids fed before the first draw (at least one).
        options: how every choice draws (its ``prime`` is not read: the prompt is
            ``prompt_ids``); with no seed, a random one.
        n: choices, each a row of the batch drawing from ``default_rng([seed, i])``.
        max_tokens: characters per choice.
        logprobs: how many top alternatives to report per character (None: no log-probabilities).
        timeout: seconds after submission when the job's rows leave, ending as ``"length"``.
        score: give each choice's last piece its ``score`` (for best-of).
    """

    def __init__(
        self,
        prompt_ids: np.ndarray,
        options: SamplingOptions | None = None,
        *,
        n: int = 1,
        max_tokens: int = 16,
        logprobs: int | None = None,
        timeout: float | None = None,
        score: bool = False,
    ) -> None:
        options = SamplingOptions() if options is None else options
        if n < 1 or max_tokens < 0 or len(prompt_ids) == 0:
            raise TextgenError("a job needs n >= 1, max_tokens >= 0 and a non-empty prompt")
        seed = resolve_seed(options.seed)
        if seed < 0:
            raise TextgenError(f"seed must be >= 0, got {seed}")
        self.prompt_ids = np.asarray(prompt_ids, dtype=np.int64)
        self.options, self.n, self.max_tokens, self.seed = options, n, max_tokens, seed
        self.logprobs, self.score = logprobs, score
        self.deadline = None if timeout is None else time.monotonic() + timeout
        self.on_ready: Callable[[], None] | None = None  # called (from the delivering thread) when
        # pieces are waiting and nobody was told yet; a web server sets it to wake its loop.
        self.on_done: Callable[[], None] | None = None  # called once its last choice has ended
        self.on_cancel: Callable[[], None] | None = None  # called by cancel (a scheduler elsewhere)
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
        if self.on_cancel is not None:
            self.on_cancel()

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


class Front:
    """What a web server uses of a scheduler, wherever its engine runs; a subclass provides
    ``submit`` and keeps the counts and the tokenizer."""

    tokenizer: Tokenizer
    _active: int  # rows in the running batch
    _reserved: int  # rows of jobs admitted and not finished

    def submit(self, job: Job) -> Job:
        """Queue a job; its pieces arrive in ``job``. Raises :class:`Busy` when full."""
        raise NotImplementedError

    @property
    def active_streams(self) -> int:
        """Rows in the running batch (as of the engine's last report, where it runs elsewhere)."""
        return self._active

    @property
    def reserved_streams(self) -> int:
        """Rows of every admitted job not finished yet, queued ones included."""
        return self._reserved

    def prompt_ids(self, prompt: str, drop_unknown: bool = False) -> np.ndarray:
        """The ids a prompt is fed as; an empty prompt starts as ``textgen sample`` does."""
        return prime_ids(self.tokenizer, prompt, drop_unknown)

    def generate(self, job: Job, timeout: float = 60.0) -> list[str]:
        """Submit a job and wait for its texts, one per choice; cancel it after ``timeout``."""
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


class Scheduler(Front):
    """Runs all jobs of one model as one batch, in a background thread.

    Args:
        sampler: a numpy-engine :class:`~textgen.sample.sampler.Sampler`; the scheduler takes over
        its
            engine (do not use the sampler elsewhere meanwhile).
        max_streams: rows (choices) admitted at once, queued or running; more raise :class:`Busy`.
        on_step: called with the batch size before every engine step (for tests and metrics).
        on_turn: called from the engine thread with the batch size after every turn of its loop
            (a step, a prompt chunk, rows joining or leaving) and once more when it stops: the
            moment to pass on what the jobs' ``_deliver`` gathered.
    """

    def __init__(
        self,
        sampler: Sampler,
        *,
        max_streams: int = Limits.max_streams,
        on_step: Callable[[int], None] | None = None,
        on_turn: Callable[[int], None] | None = None,
    ) -> None:
        if not hasattr(sampler.engine, "state"):
            raise TextgenError("serving needs the numpy engine")
        self.sampler, self.tokenizer = sampler, sampler.tokenizer
        self.max_streams, self.on_step, self.on_turn = max_streams, on_step, on_turn
        self._stack = sampler.engine
        self._state_size = get_cell(self._stack.cell).state_size  # h (and c) per layer
        self._cond = threading.Condition()
        self._queue: list[Job] = []
        self._reserved = 0  # rows of jobs admitted and not finished
        self._active = 0  # rows in the running batch
        self._closing = False
        self._batch = Batch(self.tokenizer, max_streams)
        self._thread = threading.Thread(target=self._loop, name="textgen-batcher", daemon=True)
        self._thread.start()

    # -- client side ----------------------------------------------------------------------------
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

    def close(self) -> None:
        """End every job now (its choices finish as ``"length"``) and stop the thread."""
        with self._cond:
            self._closing = True
            self._cond.notify()
        self._thread.join(timeout=10)

    # -- engine thread ----------------------------------------------------------------------
    def _loop(self) -> None:
        rows: list[Row] = []
        batch = self._batch
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
                _end_expired(rows)
                ids = batch.next_ids(rows, logits)
                keep = [i for i, row in enumerate(rows) if not row.done]
                if len(keep) < len(rows):
                    if keep:
                        self._stack.state = self._stack.state[:, :, keep]
                    for row in rows:
                        if row.done:
                            batch.remove(row)
                    rows, ids = [rows[i] for i in keep], ids[keep]
                    self._release(len(logits) - len(keep))
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
            if self.on_turn is not None:
                self.on_turn(len(rows))
        for row in rows:
            batch.finish(row, "length")
            batch.remove(row)
        for job in queued:
            for i in range(job.n):
                job._deliver(Piece(i, "", "length"))
        self._active = 0
        if self.on_turn is not None:
            self.on_turn(0)

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
        prompt = job.prompt_ids if state is None else None
        new = [
            self._batch.add(
                job.options,
                job.seed,
                i,
                job._deliver,
                max_tokens=job.max_tokens,
                logprobs=job.logprobs,
                score=job.score,
                prompt=prompt,
                owner=job,
            )  # fmt: skip
            for i in range(job.n)
        ]
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
        return rows + new, logits

    def _release(self, count: int) -> None:
        with self._cond:
            self._reserved -= count


def _end_expired(rows: list[Row]) -> None:
    """End, as ``"length"``, the rows of jobs cancelled or past their deadline."""
    now = None
    for row in rows:
        job = row.owner
        if row.done or not (job.cancelled or job.deadline is not None):
            continue
        if now is None:
            now = time.monotonic()
        if job.cancelled or now > job.deadline:
            Batch.finish(row, "length")
