"""A model's :class:`~textgen.serve.batching.Scheduler` in a process of its own.

CPython runs one thread's Python at a time per process. In one process the web server's event
loop, streaming a few hundred chunks a second to 64 clients, takes the interpreter for a few
hundred microseconds at a time, and the engine thread, which gives it up for every numpy call,
waits out each of those turns between two of its own: on a 2-core AMD Zen 5, a thread holding
the interpreter 240 us in every 1.5 ms cut the scheduler from 0.90-0.97 of
``Sampler.generate_batch`` at 64 streams to 0.60-0.72. Here the engine steps in a child process
with an interpreter of its own, and the server only reads the pieces it sends.

:class:`EngineProcess` has the scheduler's client side (``submit``, ``prompt_ids``,
``active_streams``, ``reserved_streams``, ``close``) over :class:`~textgen.serve.batching.Job`
objects, so the HTTP layer drives either. The child is started with ``spawn`` on every platform
(no forked copy of a threaded server) and gets the loaded run, so both processes serve the same
weights even if the run directory changes meanwhile. It ends when the server closes it or when
the server's end of the pipe closes (the server exited, however it exited).

Pieces cross in batches: the child sends what its rows produced after a step, at most every
``SEND_SECONDS`` while rows run, at once when the batch empties. A choice's plain characters
(no log-probabilities, not its last) cross as one piece per send: the server then handles a
piece per row every few steps, not one per character.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import multiprocessing
import signal
import threading
import time
from collections import deque
from dataclasses import replace

from textgen.errors import TextgenError
from textgen.run import Run
from textgen.sample.generation import Piece
from textgen.sample.sampler import Sampler
from textgen.serve.batching import Busy, Front, Job, Scheduler
from textgen.serve.limits import Limits

__all__ = ["EngineProcess", "EngineStopped"]

# Sending is a pickle and a pipe write in the child and a thread wake-up in the server, which
# may be scheduled on the engine's core and preempt it: at most one per 5 ms
# (a few steps of 64 streams, dozens of a lone stream's). The server streams a choice's text
# every 20 ms or more anyway; the first piece after a pause and the last ones go at once.
SEND_SECONDS = 0.005
START_SECONDS = 60.0  # for the child to load its copy of the weights and answer


class EngineStopped(TextgenError):
    """The engine process has ended: the server closed it, or it died (see ``failure``)."""


class EngineProcess(Front):
    """Runs one model's scheduler in a child process; jobs are submitted and read here.

    Args:
        run: the loaded run (``textgen.run.open_run``); its weights go to the child.
        max_streams: rows admitted at once, queued or running; more raise :class:`Busy`.
        adapt_blas_threads: the child's numpy BLAS threads follow the idle cores
            (``textgen.cores.AdaptiveBlasThreads``).

    Raises:
        TextgenError: the child could not start or load the run.
    """

    def __init__(
        self, run: Run, *, max_streams: int = Limits.max_streams, adapt_blas_threads: bool = False
    ) -> None:
        self.tokenizer = run.tokenizer
        self.max_streams = max_streams
        context = multiprocessing.get_context("spawn")
        self._conn, child_end = context.Pipe()
        self._process = context.Process(
            target=_child,
            args=(child_end, run, max_streams, adapt_blas_threads),
            name="textgen-engine",
            daemon=True,
        )
        try:
            self._process.start()
        except OSError as err:
            raise TextgenError(f"cannot start the engine process: {err}") from None
        finally:
            child_end.close()  # so that the child's exit reads as the end of the pipe here
        self._send_lock = threading.Lock()
        self._lock = threading.Lock()  # guards the jobs and the reserved count
        self._jobs: dict[int, tuple[Job, set[int]]] = {}  # key -> job, its finished choices
        self._keys = itertools.count()
        self._reserved = 0
        self._active = 0
        self.blas_threads: int | None = None
        self.failure: str | None = None  # why the child ended, when nobody closed it
        self._closed = False
        try:
            if not self._conn.poll(START_SECONDS):
                raise TextgenError(f"the engine process did not start in {START_SECONDS:.0f} s")
            kind, detail = self._conn.recv()
            if kind != "ready":
                raise TextgenError(f"the engine process failed: {detail}")
        except (EOFError, OSError):
            self._process.join(timeout=10)
            code = self._process.exitcode
            raise TextgenError(
                f"the engine process ended while starting (exit code {code})"
            ) from None
        except TextgenError:
            self._process.kill()
            self._process.join()
            raise
        self.blas_threads = detail
        self._reader = threading.Thread(target=self._read, name="textgen-pieces", daemon=True)
        self._reader.start()

    def submit(self, job: Job) -> Job:
        """Send a job to the child; its pieces arrive in ``job`` as they are made.

        Raises:
            Busy: fewer than ``job.n`` rows are free.
            EngineStopped: the engine process has ended.
        """
        with self._lock:
            if self._closed or not self._process.is_alive():
                raise EngineStopped(self.failure or "the engine has stopped")
            if self._reserved + job.n > self.max_streams:
                raise Busy(f"all {self.max_streams} streams are busy; try again shortly")
            key = next(self._keys)
            self._reserved += job.n
            self._jobs[key] = (job, set())
        left = None if job.deadline is None else max(0.0, job.deadline - time.monotonic())
        fields = (job.prompt_ids, job.options, job.seed, job.n, job.max_tokens, job.logprobs)
        fields += (left, job.score)
        job.on_cancel = lambda: None if job.done else self._send(("cancel", key))
        self._send(("job", key, fields))
        if job.cancelled:  # cancelled before its hook was set
            self._send(("cancel", key))
        return job

    def close(self) -> None:
        """End every job now (its choices finish as ``"length"``) and stop the child."""
        with self._lock:
            self._closed = True
        self._send(("close",))
        self._process.join(timeout=10)
        if self._process.is_alive():
            self._process.kill()
            self._process.join()
        self._reader.join(timeout=10)
        code = self._process.exitcode
        if code != 0 and self.failure is None:  # a clean close ends the child with 0
            logging.getLogger(__name__).error(
                "textgen serve: the engine ended with exit code %s", code
            )

    def _send(self, message: tuple) -> None:
        with self._send_lock, contextlib.suppress(OSError, ValueError):  # the child has gone
            self._conn.send(message)

    def _read(self) -> None:
        """Hand the child's pieces to their jobs until it stops; then end what is left."""
        try:
            while True:
                self._take(self._conn.recv())
        except (EOFError, OSError):
            pass
        except Exception as err:  # a reader that died silently would leave every job hanging
            self.failure = f"the engine's answers could not be read: {err!r}"
            self._process.kill()
        self._process.join(timeout=10)
        self._active = 0
        with self._lock:
            if not self._closed and self.failure is None:
                code = self._process.exitcode
                self.failure = f"the engine process stopped (exit code {code})"
            self._closed = True
            left = [(key, job, ended) for key, (job, ended) in self._jobs.items()]
        if self.failure is not None:
            logging.getLogger(__name__).error("textgen serve: %s", self.failure)
        for key, job, ended in left:
            for index in range(job.n):
                if index not in ended:
                    self._deliver(key, Piece(index, "", "length"))

    def _take(self, message: tuple) -> None:
        self._active, self.blas_threads, pieces = message
        for key, index, text, finish, logprobs, score in pieces:
            self._deliver(key, Piece(index, text, finish, logprobs, score))

    def _deliver(self, key: int, piece: Piece) -> None:
        entry = self._jobs.get(key)
        if entry is None:  # never expected; the reader thread must not die of it
            return
        job, ended = entry
        if piece.finish_reason is not None:
            ended.add(piece.index)
            if len(ended) == job.n:
                # Rows are free before the client hears of the end, so that its next request
                # finds them free.
                with self._lock:
                    del self._jobs[key]
                    self._reserved -= job.n
        job._deliver(piece)


class _Forwarding(Job):
    """A job in the child: its pieces go to the outbox, tagged with the server's key.

    Plain characters (a piece with no log-probabilities that does not end its choice) are held
    per choice until :meth:`flush` or the choice's next other piece, and cross as one piece.
    """

    def __init__(self, key: int, outbox: deque, holding: set, fields: tuple) -> None:
        prompt_ids, options, seed, n, max_tokens, logprobs, timeout, score = fields
        super().__init__(
            prompt_ids, replace(options, seed=seed), n=n, max_tokens=max_tokens,
            logprobs=logprobs, timeout=timeout, score=score,
        )  # fmt: skip
        self.key, self._outbox, self._holding = key, outbox, holding
        self._held: list[list[str]] = [[] for _ in range(n)]

    def _deliver(self, piece: Piece) -> None:
        held = self._held[piece.index]
        if piece.finish_reason is None and piece.logprobs is None:
            held.append(piece.text)
            self._holding.add(self)
            return
        # A choice's pieces carry log-probabilities all or none, so held text never needs any.
        text = "".join([*held, piece.text])
        held.clear()
        self._outbox.append(
            (self.key, piece.index, text, piece.finish_reason, piece.logprobs, piece.score)
        )
        if piece.finish_reason is not None:
            self._open -= 1

    def flush(self) -> None:
        """Move the held characters to the outbox, one piece per choice."""
        for index, held in enumerate(self._held):
            if held:
                self._outbox.append((self.key, index, "".join(held), None, None, None))
                held.clear()


def _child(conn, run: Run, max_streams: int, adapt_blas_threads: bool) -> None:
    """The child's main: load the run, answer ``ready``, then take jobs until told to stop."""
    # Ctrl-C in a terminal, and a service manager's SIGTERM, reach the whole process group; the
    # server then ends its streams and closes this child itself (or, gone, ends the pipe).
    for name in ("SIGINT", "SIGTERM", "SIGHUP"):
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), signal.SIG_IGN)
    try:
        sampler = Sampler.from_run(run)
    except TextgenError as err:
        conn.send(("failed", str(err)))
        return
    blas = None
    if adapt_blas_threads:
        from textgen.cores import AdaptiveBlasThreads

        with contextlib.suppress(ImportError, OSError):
            blas = AdaptiveBlasThreads()
            blas.start()
    outbox: deque[tuple] = deque()  # appended by the jobs, emptied by send
    holding: set[_Forwarding] = set()  # jobs holding plain characters for the next send
    sending = threading.Lock()  # send runs in the engine thread, and here in a rare case below
    last = 0.0

    def threads() -> int | None:
        return None if blas is None else blas.threads

    def send(active: int, flush: bool = True) -> None:
        # Called by the engine thread after every turn of its loop; held characters are only
        # flushed there, since the engine thread appends to them without a lock.
        nonlocal last
        if (outbox or holding) and (active == 0 or time.perf_counter() - last >= SEND_SECONDS):
            with sending:
                while flush and holding:
                    holding.pop().flush()
                batch = [outbox.popleft() for _ in range(len(outbox))]
                last = time.perf_counter()
                with contextlib.suppress(OSError):  # the server has gone; the loop below ends
                    conn.send((active, threads(), batch))

    scheduler = Scheduler(sampler, max_streams=max_streams, on_turn=send)
    conn.send(("ready", threads()))
    jobs: dict[int, _Forwarding] = {}
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            break
        if message[0] == "job":
            job = _Forwarding(message[1], outbox, holding, message[2])
            jobs = {key: j for key, j in jobs.items() if not j.done}
            jobs[job.key] = job
            try:
                scheduler.submit(job)
            except Busy:  # the server frees rows later than this scheduler does, so never seen
                for index in range(job.n):
                    job._deliver(Piece(index, "", "length"))
                send(0, flush=False)
        elif message[0] == "cancel" and message[1] in jobs:
            jobs[message[1]].cancel()
        elif message[0] == "close":
            break
    scheduler.close()  # its last turn sends the pieces that end every job
    if blas is not None:
        blas.stop()
    conn.close()
