"""Idle cores from /proc/stat (and the load average where it is missing), and BLAS threads."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from textgen import cores
from textgen.cores import (
    AdaptiveBlasThreads,
    LoadMeter,
    busy_shares,
    cpu_jiffies,
    idle_cores,
    idle_cores_between,
    idle_cores_from,
)

# user nice system idle iowait irq softirq steal guest guest_nice
BEFORE = """cpu  300 0 100 900 20 0 0 0 50 0
cpu0 100 0 50 300 10 0 0 0 50 0
cpu1 100 0 25 300 5 0 0 0 0 0
cpu2 100 0 25 300 5 0 0 0 0 0
intr 12345 0 0
ctxt 999
"""
# Over the interval: cpu0 busy 90 of 100 jiffies (10 idle), cpu1 idle apart from 5 iowait and 5
# system, cpu2 half busy (steal counts as busy).
AFTER = """cpu  0 0 0 0 0 0 0 0 0 0
cpu0 180 0 60 310 10 0 0 0 90 0
cpu1 100 0 30 390 10 0 0 0 0 0
cpu2 130 0 25 350 5 0 10 10 0 0
intr 22345 0 0
"""


def test_jiffies_per_cpu_skip_the_total_line_and_guest_time():
    assert cpu_jiffies(BEFORE) == {0: (150, 460), 1: (125, 430), 2: (125, 430)}


def test_busy_share_is_non_idle_non_iowait_time():
    assert busy_shares(BEFORE, AFTER, {0, 1, 2}) == pytest.approx({0: 0.9, 1: 0.05, 2: 0.5})


def test_only_the_cpus_of_the_affinity_count():
    assert set(busy_shares(BEFORE, AFTER, {1, 2})) == {1, 2}
    assert idle_cores_between(BEFORE, AFTER, {0, 1}) == 1  # cpu0 busy, cpu1 idle
    assert idle_cores_between(BEFORE, AFTER, {1}) == 1
    assert idle_cores_between(BEFORE, AFTER, {0}) == 1  # never fewer than one
    # Busy 0.9 + 0.05 + 0.5 = 1.45 of 3 cores: 1.55 idle, rounded to 2.
    assert idle_cores_between(BEFORE, AFTER, {0, 1, 2}) == 2
    # A CPU missing from /proc/stat (offline) is left out rather than counted idle.
    assert idle_cores_between(BEFORE, AFTER, {1, 7}) == 1


def test_own_use_counts_as_idle():
    # Of the 1.45 busy cores, 0.9 were this process's own: only 0.55 are others'.
    assert idle_cores_between(BEFORE, AFTER, {0, 1, 2}, own_cores=0.9) == 2
    assert idle_cores_between(BEFORE, AFTER, {0, 1}, own_cores=0.9) == 2
    assert idle_cores_between(BEFORE, AFTER, {0, 1}, own_cores=5.0) == 2


def test_no_elapsed_time_is_an_error():
    with pytest.raises(ValueError, match="no CPU time"):
        busy_shares(BEFORE, BEFORE, {0, 1})
    with pytest.raises(ValueError, match="no CPU time"):
        busy_shares(BEFORE, AFTER, {5})


def test_load_average_rule():
    assert idle_cores_from(2, "0.10 0.40 0.90 1/79 123") == 2  # idle: both cores
    assert idle_cores_from(2, "0.10 0.40 0.90 2/79 123") == 1  # another process running now
    assert idle_cores_from(2, "1.20 0.40 0.90 1/79 123") == 1  # busy over the last minute
    assert idle_cores_from(2, "7.00 7.00 7.00 9/79 123") == 1  # never fewer than one
    assert idle_cores_from(8, "3.00 3.00 3.00 1/79 123") == 5
    # Three steady busy processes show in both figures; they are not counted twice.
    assert idle_cores_from(8, "3.00 3.00 3.00 4/79 123") == 5


def test_falls_back_to_the_load_average_then_to_one(tmp_path: Path):
    loadavg = tmp_path / "loadavg"
    loadavg.write_text("9.00 9.00 9.00 12/79 123\n")
    assert idle_cores(0.0, stat=tmp_path / "missing", loadavg=loadavg) == 1
    loadavg.write_text("0.00 0.00 0.00 1/79 123\n")
    assert idle_cores(0.0, stat=tmp_path / "missing", loadavg=loadavg) == cores.usable_cores()
    # A /proc/stat that does not move (no time elapsed) is no measurement either.
    frozen = tmp_path / "stat"
    frozen.write_text(BEFORE)
    assert idle_cores(0.0, stat=frozen, loadavg=loadavg) == cores.usable_cores()
    assert idle_cores(0.0, stat=tmp_path / "missing", loadavg=tmp_path / "missing") == 1


SPIN = """
import os, sys
os.sched_setaffinity(0, {int(sys.argv[1])})
print("spinning", flush=True)
while True:
    pass
"""


@pytest.mark.skipif(not cores.STAT.exists(), reason="needs /proc/stat")
def test_a_spinning_process_shows_its_core_as_busy():
    cpu = max(cores.usable_cpus())
    child = subprocess.Popen(
        [sys.executable, "-c", SPIN, str(cpu)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout.readline().strip() == "spinning"
        before = cores.STAT.read_text()
        time.sleep(0.3)
        after = cores.STAT.read_text()
        # Whatever else runs on this machine, the spinning child alone keeps its core busy.
        assert busy_shares(before, after, {cpu})[cpu] > 0.8
        # The measurement as the command line takes it sees one core fewer idle.
        meter = LoadMeter()
        time.sleep(0.2)
        assert meter.idle_cores() <= max(1, cores.usable_cores() - 1)
    finally:
        child.kill()
        child.wait()


@pytest.mark.skipif(not cores.STAT.exists(), reason="needs /proc/stat")
def test_adaptive_threads_set_numpy_blas_to_the_measured_idle_cores():
    pytest.importorskip("threadpoolctl")
    import numpy as np  # noqa: F401  (loads the BLAS library threadpoolctl controls)

    adaptive = AdaptiveBlasThreads(every=0.02)
    if adaptive.initial is None:
        pytest.skip("numpy's BLAS is not one threadpoolctl knows")
    adaptive.start()
    try:
        deadline = time.monotonic() + 30
        while adaptive.updates < 3:
            assert time.monotonic() < deadline, "no measurements"
            time.sleep(0.02)
    finally:
        adaptive.stop()
    # Each measurement's count was set: the library, asked again, reports it.
    assert 1 <= adaptive.measured <= min(cores.usable_cores(), cores.MAX_BLAS_THREADS)
    assert adaptive.threads == adaptive.measured
    # Stopped, the count found at the start is back.
    assert adaptive.current() == adaptive.initial


def test_the_command_line_keeps_a_thread_count_the_user_chose():
    # A command's body runs after the choice is made (and before it loads numpy).
    code = "import os, textgen.cli.commands as c\n"
    code += "c._numpy_command(lambda: None)()\n"
    code += "print(os.environ['OPENBLAS_NUM_THREADS'], c.BLAS_THREADS_CHOSEN)"
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "3"}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
    )
    assert out.stdout.split() == ["3", "True"]
    env.pop("OPENBLAS_NUM_THREADS")
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
    )
    threads, chosen = out.stdout.split()
    assert 1 <= int(threads) <= cores.MAX_BLAS_THREADS and chosen == "False"
