"""Speed of this checkout against an earlier revision, measured side by side in one run.

Usage: python benchmarks/before_after.py [--base REV] [--rounds 5] [--seconds 8] [--dropout 0.3]

The base revision is checked out into a temporary git worktree. Each round times, in fresh
processes and alternating between the two checkouts, what both revisions' public API offers:
the training step (E64, 1x512 LSTM, batch 64, seq 100, with ``textgen train``'s default dropout
at that size unless ``--dropout`` says otherwise) and how long its first call takes (TensorFlow
traces it then), and sampling with the numpy engine at 1 and 64 streams, importing what both
layouts of the package offer (the flat one, and the stage folders). It prints the medians and
the ratio this/base; ratios near 1.00 mean "the same speed, within noise" (for the first step's
seconds, below 1 is faster).

This machine's environment is used as it is (including any OPENBLAS_CORETYPE); only the
relative figure is the point here.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

TRAIN = r"""
import json, sys, time
import numpy as np
from textgen import TrainConfig, build_model
from textgen.backend import tf
try:  # the stage folders
    from textgen.training.steps import build_train_step, make_optimizer
except ImportError:  # the flat layout before them
    from textgen.training import build_train_step, make_optimizer

seconds, dropout = float(sys.argv[1]), float(sys.argv[2])
config = TrainConfig(embedding_dim=64, units=512, batch_size=64, seq_length=100)
model = build_model(65, embedding_dim=64, units=512)
optimizer = make_optimizer(config)
optimizer.build(model.trainable_variables)
if dropout > 0:
    from textgen.config import Noise

    step = build_train_step(model, optimizer, Noise(dropout))
else:
    step = build_train_step(model, optimizer)
rng = np.random.default_rng(0)
x = tf.constant(rng.integers(0, 65, (64, 100)), tf.int32)
y = tf.constant(rng.integers(0, 65, (64, 100)), tf.int32)
seed, lr = tf.constant([0, 0], tf.int32), tf.constant(1e-3, tf.float32)
start = time.perf_counter()
float(step(x, y, seed, lr))  # traced here
first = time.perf_counter() - start
for _ in range(2):
    float(step(x, y, seed, lr))
n, start = 0, time.perf_counter()
while time.perf_counter() - start < seconds:
    float(step(x, y, seed, lr))
    n += 1
print(json.dumps({"train": n * 64 * 100 / (time.perf_counter() - start), "first_step": first}))
"""

SAMPLE = r"""
import json, sys, time
import numpy as np
from textgen import Sampler, Tokenizer

seconds = float(sys.argv[1])
rng = np.random.default_rng(0)
vocab, units = 65, 512
weights = {
    "embedding": rng.normal(0, 0.1, (vocab, 64)).astype(np.float32),
    "rnn_0/kernel": rng.normal(0, 0.1, (64, 4 * units)).astype(np.float32),
    "rnn_0/recurrent_kernel": rng.normal(0, 0.05, (units, 4 * units)).astype(np.float32),
    "rnn_0/bias": np.zeros(4 * units, np.float32),
    "dense/kernel": rng.normal(0, 0.1, (units, vocab)).astype(np.float32),
    "dense/bias": np.zeros(vocab, np.float32),
}
sampler = Sampler(weights, Tokenizer([chr(32 + i) for i in range(vocab)]), cell="lstm")
out = {}
for streams in (1, 64):
    length = 2000 if streams == 1 else 200
    sampler.generate_batch(streams, 50, temperature=0.8, seed=1)
    chars, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds / 2:
        sampler.generate_batch(streams, length, temperature=0.8, seed=1)
        chars += streams * length
    out[f"sample_{streams}"] = chars / (time.perf_counter() - start)
print(json.dumps(out))
"""


def _measure(checkout: Path, script: str, *script_args: float) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": str(checkout), "TF_CPP_MIN_LOG_LEVEL": "3"}
    done = subprocess.run(
        [sys.executable, "-c", script, *map(str, script_args)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        cwd=checkout,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default="HEAD~1", help="the revision to compare against")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=8.0, help="per measurement")
    parser.add_argument(
        "--dropout", type=float, default=0.3, help="the training step's dropout (0: none)"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        base = Path(scratch) / "base"
        subprocess.run(
            ["git", "-C", str(REPO), "worktree", "add", "--detach", str(base), args.base],
            check=True,
            capture_output=True,
        )
        try:
            results: dict[str, dict[str, list[float]]] = {"base": {}, "this": {}}
            for round_ in range(args.rounds):
                order = [("base", base), ("this", REPO)]
                if round_ % 2:
                    order.reverse()  # neither side always runs first
                for script, script_args in (
                    (TRAIN, (args.seconds, args.dropout)),
                    (SAMPLE, (args.seconds,)),
                ):
                    for label, checkout in order:
                        for key, value in _measure(checkout, script, *script_args).items():
                            results[label].setdefault(key, []).append(value)
        finally:
            subprocess.run(
                ["git", "-C", str(REPO), "worktree", "remove", "--force", str(base)],
                capture_output=True,
            )
    names = {
        "train": f"training step, dropout {args.dropout:g}, chars/s",
        "first_step": "first training step (traced), s",
        "sample_1": "sampling, 1 stream, chars/s",
        "sample_64": "sampling, 64 streams, chars/s",
    }
    print(f"base {args.base} against this checkout, medians of {args.rounds} rounds")
    print(f"{'measure':36s} {'base':>10s} {'this':>10s} {'this/base':>10s}")
    for key, name in names.items():
        before = statistics.median(results["base"][key])
        after = statistics.median(results["this"][key])
        form = ",.0f" if before >= 100 else ".2f"
        print(f"{name:36s} {before:10{form}} {after:10{form}} {after / before:10.2f}")


if __name__ == "__main__":
    main()
