"""How fast and how large the copy index is: build once, then check samples.

Usage::

    python benchmarks/copies.py [--megabytes 100]

Builds the suffix array of a corpus of that many characters (random words from a vocabulary of
50,000, so that it repeats itself like text), in a fresh
process whose peak memory is reported, writes it to a cache folder, then loads it as
``textgen sample`` does and times ``longest_copy`` on 500-character samples: one drawn from
the same words (short copies) and one cut from the corpus (a 500-character copy).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

CHILD = """
import sys, time
import numpy as np
from pathlib import Path
sys.path.insert(0, {root!r})
from textgen.sample.copies import CopyIndex
ids = np.memmap({ids!r}, dtype=np.uint8, mode="r")
started = time.perf_counter()
CopyIndex.cached(ids, Path({cache!r}), "bench")
seconds = time.perf_counter() - started
# VmHWM is this process's own peak; ru_maxrss would carry the parent's over exec.
peak = [l for l in open("/proc/self/status") if l.startswith("VmHWM")][0].split()[1]
print(seconds, peak)
"""


def corpus(n: int, seed: int = 0) -> np.ndarray:
    """``n`` ids: random words of 2 to 9 letters from a fixed vocabulary, between spaces."""
    words = np.random.default_rng(0)  # the same vocabulary for the corpus and the samples
    vocabulary = [
        bytes(words.integers(97, 123, int(words.integers(2, 10)), dtype=np.uint8)) + b" "
        for _ in range(50_000)
    ]
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(vocabulary), n // 5 + 10)
    text = b"".join(vocabulary[i] for i in picks)
    return np.frombuffer(text[:n], dtype=np.uint8)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--megabytes", type=float, default=100)
    args = parser.parse_args()
    n = int(args.megabytes * 1e6)
    root = str(Path(__file__).resolve().parents[1])
    sys.path.insert(0, root)
    from textgen.sample.copies import CopyIndex

    with tempfile.TemporaryDirectory() as folder:
        ids_path = Path(folder) / "corpus.ids"
        print(f"making a {n:,}-character corpus...", flush=True)
        corpus(n).tofile(ids_path)
        code = CHILD.format(root=root, ids=str(ids_path), cache=folder)
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        seconds, peak_kb = out.stdout.split()
        print(f"build: {float(seconds):.1f} s, peak memory of the building process "
              f"{int(peak_kb) / 1024:.0f} MiB, index {n * 4 / 2**20:.0f} MiB on disk")  # fmt: skip
        ids = np.memmap(ids_path, dtype=np.uint8, mode="r")
        index = CopyIndex.cached(ids, Path(folder), "bench")
        rng = np.random.default_rng(1)

        def cut():
            start = int(rng.integers(n - 500))
            return ids[start : start + 500]

        fresh = ("a fresh 500-character sample", lambda: corpus(500, int(rng.integers(1 << 30))))
        for label, make in (fresh, ("500 characters cut from the corpus", cut)):
            times, found = [], []
            for _ in range(20):
                sample = np.asarray(make(), dtype=np.int64)
                started = time.perf_counter()
                found.append(index.longest_copy(sample))
                times.append(time.perf_counter() - started)
            print(f"{label}: median {statistics.median(times) * 1000:.1f} ms, "
                  f"max {max(times) * 1000:.1f} ms (longest copy: median "
                  f"{statistics.median(found):g})")  # fmt: skip


if __name__ == "__main__":
    main()
