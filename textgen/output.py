"""Writing samples: streamed to the terminal, as JSON lines, or atomically to a file.

A single text sample is printed as it is generated, written out every 30 ms. Several samples
advance together as one batch, so they are printed when the batch ends, each after a header
line. ``--length 0`` runs until Ctrl-C; whatever was produced by then is kept (printed, or
written to the ``--output`` file) and the command still succeeds.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterable
from pathlib import Path

from textgen.files import atomic_write

# A streamed sample is written out at most this often: reading it still looks live, and a write
# per character cost about 20% of the sampling speed with unbuffered stdout.
LIVE_FLUSH_SECONDS = 0.03


def _render(texts: list[str], prime: str, fmt: str) -> str:
    if fmt == "jsonl":
        return "".join(
            json.dumps({"sample": i, "prime": prime, "text": t}, ensure_ascii=False) + "\n"
            for i, t in enumerate(texts)
        )
    if len(texts) == 1:
        return prime + texts[0] + "\n"
    return "".join(
        f"----- sample {i + 1} of {len(texts)} -----\n{prime}{t}\n" for i, t in enumerate(texts)
    )


def write_samples(
    pieces: Iterable[list[str]],
    num_samples: int,
    *,
    prime: str = "",
    fmt: str = "text",
    output: str | None = None,
) -> list[str]:
    """Consume ``Sampler.stream_batch`` output and write it; returns the sample texts."""
    parts: list[list[str]] = [[] for _ in range(num_samples)]
    live = fmt == "text" and num_samples == 1 and output is None
    out = sys.stdout
    if live:
        out.write(prime)
        out.flush()
    # Held here rather than in stdout's buffer, which may be unbuffered (PYTHONUNBUFFERED).
    pending: list[str] = []
    flushed = time.monotonic()
    try:
        for step in pieces:
            for i, piece in enumerate(step):
                if piece:
                    parts[i].append(piece)
            if live and step[0]:
                pending.append(step[0])
                if (now := time.monotonic()) - flushed >= LIVE_FLUSH_SECONDS:
                    out.write("".join(pending))
                    out.flush()
                    pending.clear()
                    flushed = now
    except KeyboardInterrupt:
        pass  # the user ended an endless or long stream; keep what exists
    texts = ["".join(p) for p in parts]
    if live:
        out.write("".join(pending) + "\n")
        out.flush()
    elif output is None:
        out.write(_render(texts, prime, fmt))
        out.flush()
    else:
        data = _render(texts, prime, fmt).encode("utf-8")
        atomic_write(Path(output), lambda f: f.write(data))
    return texts
