"""How long ``textgen inspect`` takes on 100,000 characters, and how much memory it holds.

A default-shape model (one LSTM layer of 512 units, embedding 64, vocabulary 100) with random
weights reads a text of random characters. Rows:

1. the engine alone: ``Inspector.blocks`` (probabilities, top-5 guesses, h and c per character);
2. ``inspect_text``: 1 and the ranking of 1,024 states for the five built-in features;
3. the HTML report to ``/dev/null`` (``write_report``): 2, the ranked cells' activations read
   back from the temporary file, and the page written in pieces;
4. ``--format jsonl`` to ``/dev/null``: every character's whole state as a JSON line.

Each row runs in a child process of its own, which also reports its peak resident memory; the
same row over a tenth of the text shows that memory does not grow with the text (row 3 keeps
about 200 bytes a character: the guesses and the chosen cells' activations as arrays). Numpy's
BLAS runs one thread, as the command line chooses on a busy machine.

    python benchmarks/inspection.py                  # 100,000 characters
    python benchmarks/inspection.py --chars 20000 --rows 1 2
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

ROWS = {
    "1": "engine: Inspector.blocks",
    "2": "inspect_text (ranking)",
    "3": "HTML report to /dev/null",
    "4": "JSON lines to /dev/null",
}


def child(row: str, chars: int) -> dict:
    """Run one row here; return its seconds and peak memory."""
    import resource

    import numpy as np

    from textgen.config import ModelConfig
    from textgen.sample.inspect_report import write_jsonl, write_report
    from textgen.sample.inspection import Inspector, inspect_text
    from textgen.tokenizer import Tokenizer
    from textgen.weights import weight_shapes

    alphabet = [chr(c) for c in range(32, 127)] + ["\n", "\t", "é", "—", "“"]
    tokenizer = Tokenizer(alphabet)
    config = ModelConfig(tokenizer.vocab_size, 64, 512, 1, "lstm")
    rng = np.random.default_rng(0)
    weights = {
        name: rng.normal(0, 0.08, shape).astype(np.float32)
        for name, shape in weight_shapes(config).items()
    }
    text = "".join(rng.choice(alphabet, chars))
    inspector = Inspector(weights, tokenizer, "lstm")
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    if row == "1":
        for _ in inspector.blocks(tokenizer.encode(text)):
            pass
    elif row == "2":
        inspect_text(inspector, text)
    elif row == "3":
        write_report(inspector, text, os.devnull, fmt="html")
    else:
        with open(os.devnull, "wb") as sink:
            write_jsonl(inspector, text, sink)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"seconds": seconds, "peak_mb": peak / 1024, "setup_mb": before / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--chars", type=int, default=100_000)
    parser.add_argument("--rows", nargs="*", default=list(ROWS), choices=list(ROWS))
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child[0], int(args.child[1]))))
        return
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1"}
    print(f"load average {os.getloadavg()[0]:.2f}; {os.cpu_count()} CPUs")
    print(f"{'row':<28} {'chars':>8} {'seconds':>8} {'chars/s':>8} {'peak MB':>8} {'grew MB':>8}")
    for row in args.rows:
        for chars in (args.chars // 10, args.chars):
            done = subprocess.run(
                [sys.executable, __file__, "--child", row, str(chars)],
                env=env, capture_output=True, text=True, check=True,
            )  # fmt: skip
            got = json.loads(done.stdout.strip().splitlines()[-1])
            grew = got["peak_mb"] - got["setup_mb"]
            print(
                f"{ROWS[row]:<28} {chars:>8} {got['seconds']:>8.2f} "
                f"{chars / got['seconds']:>8.0f} {got['peak_mb']:>8.0f} {grew:>8.0f}"
            )


if __name__ == "__main__":
    main()
