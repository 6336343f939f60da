"""How many CPU cores this process may use, and how many of them are idle right now.

This module imports neither numpy nor TensorFlow: the command line uses it to choose numpy's BLAS
threads, which numpy reads once, when it loads.

How busy the cores are is measured, not guessed: ``/proc/stat`` is read twice, a few tens of
milliseconds apart, and each usable core's busy share is the part of its elapsed time (in the
kernel's jiffies) spent neither idle nor waiting for I/O. The 1-minute load average, the fallback
where ``/proc/stat`` cannot be read, lags a job that just started or ended by a minute or more.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Collection
from pathlib import Path

# Sampling multiplies by a few-megabyte matrix once per character; spreading that over more
# threads only adds hand-offs. Measured on 2 cores only: this cap is a guess past that.
MAX_BLAS_THREADS = 4
# Between the two readings of /proc/stat. Its counters tick 100 times a second, so 50 ms gives
# each core 5 ticks: enough to tell a busy core from an idle one, short beside numpy's import.
MEASURE_SECONDS = 0.05
# How often a long-running process (the server) measures again and adjusts its BLAS threads.
REMEASURE_SECONDS = 2.0

STAT = Path("/proc/stat")
LOADAVG = Path("/proc/loadavg")


def usable_cpus() -> set[int]:
    """The CPU numbers this process may run on (its affinity), or all of them outside Linux."""
    try:
        return set(os.sched_getaffinity(0))
    except AttributeError:  # no affinity call outside Linux
        return set(range(os.cpu_count() or 1))


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity, not the machine's total)."""
    return max(1, len(usable_cpus()))


def cpu_jiffies(stat: str) -> dict[int, tuple[int, int]]:
    """Per CPU number, ``(busy, total)`` jiffies since boot, from the text of ``/proc/stat``.

    Busy is every state but idle and iowait (user, nice, system, irq, softirq, steal). The
    guest columns are left out: the kernel already counts them inside user and nice.
    """
    out = {}
    for line in stat.splitlines():
        if not (line.startswith("cpu") and line[3:4].isdigit()):
            continue  # the "cpu" line sums all CPUs; other lines are not per CPU
        name, *fields = line.split()
        values = [int(v) for v in fields[:8]]
        idle = sum(values[3:5])  # idle, iowait
        out[int(name[3:])] = (sum(values) - idle, sum(values))
    return out


def busy_shares(before: str, after: str, cpus: Collection[int]) -> dict[int, float]:
    """The busy share (0 to 1) of each of ``cpus`` between two readings of ``/proc/stat``.

    CPUs missing from either reading (offline) are left out.

    Raises:
        ValueError: no CPU of ``cpus`` has any elapsed time between the readings.
    """
    first, second = cpu_jiffies(before), cpu_jiffies(after)
    shares = {}
    for cpu in sorted(cpus):
        if cpu in first and cpu in second:
            busy = second[cpu][0] - first[cpu][0]
            total = second[cpu][1] - first[cpu][1]
            if total > 0:
                shares[cpu] = min(1.0, max(0.0, busy / total))
    if not shares:
        raise ValueError("no CPU time elapsed between the two readings")
    return shares


def idle_cores_between(
    before: str, after: str, cpus: Collection[int], own_cores: float = 0.0
) -> int:
    """Of ``cpus``, how many were idle between two readings of ``/proc/stat``; at least 1.

    ``own_cores`` is how many cores' worth of that time this process itself used; it counts as
    idle, so that a process measuring while it works does not see its own work as contention.
    The busy shares are summed and the idle remainder rounded to the nearest whole core.
    """
    shares = busy_shares(before, after, cpus)
    busy = max(0.0, sum(shares.values()) - own_cores)
    return max(1, min(len(shares), int(len(shares) - busy + 0.5)))


def idle_cores_from(cores: int, loadavg: str) -> int:
    """Of ``cores``, how many nothing else is using, from the text of ``/proc/loadavg``.

    Busy cores are the larger of the 1-minute load average and the number of processes running
    at this instant besides this one (the average lags a process that just started by a
    minute). The answer is at least 1. This is the fallback where ``/proc/stat`` is missing.
    """
    parts = loadavg.split()
    busy = max(float(parts[0]), int(parts[3].split("/")[0]) - 1)
    return max(1, min(cores, int(cores - busy + 0.5)))


class LoadMeter:
    """Idle cores between successive readings of ``/proc/stat``; the first is taken when made.

    Raises:
        OSError: ``/proc/stat`` cannot be read (outside Linux).
    """

    def __init__(self, stat: Path = STAT) -> None:
        self._path = stat
        self._last = self._read()

    def _read(self) -> tuple[str, float, float]:
        return self._path.read_text(), time.process_time(), time.monotonic()

    def idle_cores(self, *, exclude_self: bool = False) -> int:
        """Idle usable cores since the previous reading; with ``exclude_self`` this process's
        own CPU time (all its threads) counts as idle.

        Raises:
            OSError, ValueError: ``/proc/stat`` cannot be read or shows no elapsed time.
        """
        (before, cpu_before, wall_before), now = self._last, self._read()
        self._last = now
        after, cpu_after, wall_after = now
        own = 0.0
        if exclude_self and wall_after > wall_before:
            own = (cpu_after - cpu_before) / (wall_after - wall_before)
        return idle_cores_between(before, after, usable_cpus(), own)


def idle_cores(
    seconds: float = MEASURE_SECONDS, *, stat: Path = STAT, loadavg: Path = LOADAVG
) -> int:
    """The usable cores idle over the next ``seconds``, at least 1.

    Falls back to the load average where ``/proc/stat`` cannot be read or does not change, and
    to 1 where neither can be read (the choice that never collapses under contention).
    """
    try:
        meter = LoadMeter(stat)
        time.sleep(seconds)
        return meter.idle_cores()
    except (OSError, ValueError, IndexError):
        pass
    try:
        return idle_cores_from(usable_cores(), loadavg.read_text())
    except (OSError, ValueError, IndexError):
        return 1


def blas_threads() -> int:
    """BLAS threads for sampling: the idle usable cores right now, at most ``MAX_BLAS_THREADS``."""
    return min(idle_cores(), MAX_BLAS_THREADS)


class AdaptiveBlasThreads:
    """Keeps numpy's BLAS threads at the idle cores while a long-running process samples.

    :meth:`start` runs a thread of its own that every ``every`` seconds measures the cores over
    the time since its previous measurement, counting this process's own use (all its threads)
    as idle, and sets numpy's BLAS thread count through threadpoolctl when the answer changed;
    :meth:`stop` ends it and puts back the count found at the start. One thread does all the
    setting because threadpoolctl lets a single live thread control a process-wide OpenBLAS pool
    (if another thread of the program set a limit first and still runs, this changes nothing and
    ``threads`` says so). OpenBLAS's count is global, and changing it while other threads are in
    BLAS calls is safe; with an OpenMP build the count would be per thread, so this is for the
    pthreads OpenBLAS that numpy's wheels carry.

    Attributes:
        measured: the count the last measurement asked for (None before the first).
        threads: the count in force after it, as the library reported it then.

    Raises:
        ImportError: threadpoolctl is not installed.
        OSError: ``/proc/stat`` cannot be read.
    """

    def __init__(self, every: float = REMEASURE_SECONDS, *, stat: Path = STAT) -> None:
        from threadpoolctl import ThreadpoolController

        self.every = every
        self._controller = ThreadpoolController()
        self._meter = LoadMeter(stat)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.initial = self.threads = self.current()
        self.measured: int | None = None
        self.updates = 0

    def current(self) -> int | None:
        """numpy's BLAS threads now, as threadpoolctl reports them (None: no BLAS found)."""
        found = self._controller.select(user_api="blas").info()
        return found[0]["num_threads"] if found else None

    def update(self) -> int | None:
        """Measure now and set the count; returns the count in force (None: no measurement).

        Called by the thread :meth:`start` runs; call it directly only where no such thread runs.
        """
        try:
            wanted = min(self._meter.idle_cores(exclude_self=True), MAX_BLAS_THREADS)
        except (OSError, ValueError):
            return None
        if wanted != self.threads:
            self._controller.limit(limits=wanted, user_api="blas")
            self.threads = self.current()
        self.measured = wanted
        self.updates += 1
        return self.threads

    def start(self) -> None:
        """Start measuring and adjusting in a daemon thread."""
        self._thread = threading.Thread(target=self._run, name="textgen-blas", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """End the thread; the count found at the start is put back."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _run(self) -> None:
        try:
            while not self._stop.wait(self.every):
                self.update()
        finally:
            if self.initial is not None and self.threads != self.initial:
                self._controller.limit(limits=self.initial, user_api="blas")
