"""How many CPU cores this process may use, and how many of them are idle.

This module imports neither numpy nor TensorFlow: the command line uses it to choose numpy's BLAS
threads, which numpy reads once, when it loads.
"""

from __future__ import annotations

import os
from pathlib import Path

# Sampling multiplies by a few-megabyte matrix once per character; spreading that over more
# threads only adds hand-offs. Measured on 2 cores only: this cap is a guess past that.
MAX_BLAS_THREADS = 4


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity, not the machine's total)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # no affinity call outside Linux
        return os.cpu_count() or 1


def idle_cores_from(cores: int, loadavg: str) -> int:
    """Of ``cores``, how many nothing else is using, from the text of ``/proc/loadavg``.

    Busy cores are the larger of the 1-minute load average and the number of processes running
    at this instant besides this one (the average lags a process that just started by a
    minute). The answer is at least 1.
    """
    parts = loadavg.split()
    busy = max(float(parts[0]), int(parts[3].split("/")[0]) - 1)
    return max(1, min(cores, int(cores - busy + 0.5)))


def blas_threads() -> int:
    """BLAS threads for sampling: the idle usable cores, at most ``MAX_BLAS_THREADS``.

    Where the load cannot be read (outside Linux) the answer is 1, the choice that never
    collapses under contention.
    """
    try:
        idle = idle_cores_from(usable_cores(), Path("/proc/loadavg").read_text())
    except (OSError, ValueError, IndexError):
        return 1
    return min(idle, MAX_BLAS_THREADS)
