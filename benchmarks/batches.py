"""Peak memory and time of many samples at once, by how many streams advance together.

``textgen sample --num-samples N`` runs its streams ``textgen.sample.output.CHUNK_STREAMS`` at a
time. Each row here is a child process that writes N samples of ``--length`` characters to /dev/null
through ``textgen.sample.output.write_samples`` with one chunk size, for a 1 x LSTM 512 model with
random weights (vocabulary 65); the last row is the whole ``textgen sample`` command. "one
batch" is every stream at once, as before chunking. Peak memory is the child's maximum resident
set size. Every row gets one BLAS thread unless ``OPENBLAS_NUM_THREADS`` is set, so that the
command line's choice of threads does not set its row apart. Rows run once each, in turn, so
compare them within one run.

    python benchmarks/batches.py --num-samples 200000 --length 5
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# Made in a child: a process forked from one that loaded TensorFlow starts with its memory.
MAKE_RUN = """
import sys
from pathlib import Path
sys.path.insert(0, sys.argv[2])
from sampling import _saved_run
print(_saved_run(Path(sys.argv[1])))
"""
CHILD = """
import sys
from textgen.sample.output import write_samples
from textgen.sample.sampler import Sampler

run_dir, num_samples, length, chunk = sys.argv[1], *map(int, sys.argv[2:])
sampler = Sampler.from_checkpoint(run_dir)
def stream(first, count):
    return sampler.stream_batch(count, length, seed=0, first_sample=first)
write_samples(stream, num_samples, output="/dev/null", chunk=chunk)
"""


def measure(command: list[str]) -> tuple[float, float]:
    """Wall-clock seconds and peak resident MB of one child process."""
    start = time.perf_counter()
    env = {"OPENBLAS_NUM_THREADS": "1", **os.environ}
    child = subprocess.Popen(command, stdout=subprocess.DEVNULL, env=env)
    _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode:
        raise SystemExit(f"{command} failed with {child.returncode}")
    return time.perf_counter() - start, usage.ru_maxrss / 1024  # ru_maxrss is in kB on Linux


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-samples", type=int, default=50_000)
    parser.add_argument("--length", type=int, default=5)
    parser.add_argument("--chunks", type=int, nargs="+", default=[64, 256, 1024, 4096])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        here = str(Path(__file__).resolve().parent)
        made = subprocess.run(
            [sys.executable, "-c", MAKE_RUN, tmp, here], check=True, capture_output=True, text=True
        )
        run_dir = made.stdout.strip()
        n, length = str(args.num_samples), str(args.length)
        rows = {
            f"chunks of {c}": [sys.executable, "-c", CHILD, run_dir, n, length, str(c)]
            for c in args.chunks
        }
        rows["one batch"] = [sys.executable, "-c", CHILD, run_dir, n, length, n]
        rows["textgen sample"] = [
            sys.executable, "-m", "textgen", "sample", "--checkpoint", run_dir,
            "--num-samples", n, "--length", length, "--seed", "0", "--output", "/dev/null",
        ]  # fmt: skip
        print(f"{args.num_samples} samples of {args.length} characters")
        print(f"{'streams at a time':20s} {'seconds':>8s} {'peak MB':>8s}")
        for name, command in rows.items():
            seconds, peak = measure(command)
            print(f"{name:20s} {seconds:8.1f} {peak:8.0f}")


if __name__ == "__main__":
    main()
