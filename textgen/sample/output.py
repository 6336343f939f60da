"""Writing samples: streamed to the terminal, as JSON lines, or to a file, in chunks of streams.

A single text sample is printed as it is generated, written out every 30 ms. Several samples
advance together, ``CHUNK_STREAMS`` at a time: each chunk is written when it ends, its samples
each after a ``----- sample i of n -----`` line, so memory holds one chunk, however many samples
there are. ``--length 0`` runs until Ctrl-C; whatever was produced by then is kept (printed, or
written to the ``--output`` file), later chunks are not started, and the command still succeeds.
Output is UTF-8; where it goes is decided by ``textgen.sinks.write_path``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from typing import IO

from textgen.sinks import STDOUT, write_path

# A streamed sample is written out at most this often: reading it still looks live, and a write
# per character cost about 20% of the sampling speed with unbuffered stdout.
LIVE_FLUSH_SECONDS = 0.03
# Streams generated together. Memory grows with the chunk (each stream has its own Generator,
# state and text). With 512 units, 4096 samples of 200 characters took as long in chunks of 1024
# as in one batch and 25% longer in chunks of 64, and a chunk of 1024 peaked under 100 MB
# (benchmarks/batches.py).
CHUNK_STREAMS = 1024

# stream(first, count) -> ``Sampler.stream_batch`` output for samples first .. first + count - 1
Streams = Callable[[int, int], Iterable[list[str]]]
# A sample's text -> fields added to its JSON line (``{"longest_copy": 12}``)
Annotate = Callable[[str], dict]


def _render(
    texts: list[str], first: int, total: int, prime: str, fmt: str, annotate: Annotate | None
) -> str:
    if fmt == "jsonl":
        lines = []
        for i, text in enumerate(texts):
            record = {"sample": first + i, "prime": prime, "text": text}
            record.update(annotate(text) if annotate else {})
            lines.append(json.dumps(record, ensure_ascii=False) + "\n")
        return "".join(lines)
    if total == 1:
        return prime + texts[0] + "\n"
    return "".join(
        f"----- sample {first + i + 1} of {total} -----\n{prime}{t}\n" for i, t in enumerate(texts)
    )


def _collect(pieces: Iterable[list[str]], count: int) -> tuple[list[str], bool]:
    """The texts of one chunk, and whether Ctrl-C ended it early."""
    parts: list[list[str]] = [[] for _ in range(count)]
    try:
        for step in pieces:
            for i, piece in enumerate(step):
                if piece:
                    parts[i].append(piece)
    except KeyboardInterrupt:
        return ["".join(p) for p in parts], True  # the user ended the stream; keep what exists
    return ["".join(p) for p in parts], False


def _write_live(pieces: Iterable[list[str]], prime: str, out: IO[bytes]) -> None:
    out.write(prime.encode("utf-8"))
    out.flush()
    # Held here rather than in stdout's buffer, which may be unbuffered (PYTHONUNBUFFERED).
    pending: list[str] = []
    flushed = time.monotonic()
    try:
        for step in pieces:
            if step[0]:
                pending.append(step[0])
                if (now := time.monotonic()) - flushed >= LIVE_FLUSH_SECONDS:
                    out.write("".join(pending).encode("utf-8"))
                    out.flush()
                    pending.clear()
                    flushed = now
    except KeyboardInterrupt:
        pass  # the user ended an endless or long stream; keep what exists
    out.write(("".join(pending) + "\n").encode("utf-8"))
    out.flush()


def write_samples(
    stream: Streams,
    num_samples: int,
    *,
    prime: str = "",
    fmt: str = "text",
    output: str | None = None,
    chunk: int = CHUNK_STREAMS,
    annotate: Annotate | None = None,
) -> None:
    """Generate ``num_samples`` samples, ``chunk`` streams at a time, and write them in order.

    ``stream(first, count)`` must return ``Sampler.stream_batch(count, ...,
    first_sample=first)`` with the same seed each time, so that sample i draws from its own
    (seed, i) generator whichever chunk it falls in. The first chunk is started before anything
    is written, so bad options fail before any output.

    Args:
        output: a path for ``textgen.sinks.write_path``; None or ``-`` is stdout.
        annotate: fields to add to each sample's JSON line, from its text.

    Raises:
        StorageError: the output could not be written.
        BrokenPipeError: stdout's reader went away.
    """
    if chunk < 1:
        raise ValueError(f"chunk must be at least 1, got {chunk}")
    first_chunk = stream(0, min(chunk, num_samples))
    target = output or STDOUT

    def write(out: IO[bytes]) -> None:
        if fmt == "text" and num_samples == 1 and target == STDOUT:
            _write_live(first_chunk, prime, out)
            return
        pieces = first_chunk
        for first in range(0, num_samples, chunk):
            count = min(chunk, num_samples - first)
            if first:
                pieces = stream(first, count)
            texts, interrupted = _collect(pieces, count)
            rendered = _render(texts, first, num_samples, prime, fmt, annotate)
            out.write(rendered.encode("utf-8"))
            out.flush()
            if interrupted:
                return

    write_path(target, write)
