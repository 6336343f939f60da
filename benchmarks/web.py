"""The web export's engine: characters per second in headless Chromium, beside the numpy engine,
and what float16 weights cost in logits and greedy text.

Speed rows, for the default shape (embedding 64, one LSTM layer of 512 units; vocabulary 65,
random weights unless ``--run`` names a trained run), one stream at temperature 0.8:

1. textgen's numpy engine, ``Sampler.stream`` (what ``textgen sample`` runs), in this process,
   with one BLAS thread unless ``OPENBLAS_NUM_THREADS`` says otherwise.
2. textgen.js in headless Chromium (Debian's, through Playwright), from ``file://``, products in
   WebAssembly SIMD (the page's default where the browser has it).
3. The same in plain JavaScript (``textgen.load(data, {engine: "js"})``).
4. and 5. Rows 2 and 3 in Node, where ``node`` is installed.

Rows take turns in slices of ``--chars`` characters and each reports its best slice, so a burst
of load from other processes hits every row alike; compare the ratios within one run.

With ``--run RUN`` (a trained run), the float16 rows: the largest and mean absolute difference
between float16 and float32 logits in Chromium over the first ``--check-chars`` characters of a
greedy sample, and where float16's greedy text first differs from ``textgen sample
--temperature 0`` (the numpy engine) over that length, for each of a few primes.

    python benchmarks/web.py --seconds 20
    python benchmarks/web.py --run checkpoints/pydocs --check-chars 2000
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

# One BLAS thread unless the caller chose (numpy reads it once, when it loads): the JavaScript
# engine runs on one thread too, and on a busy machine a second BLAS thread waits for its core at
# every product.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))  # for Chromium's path and flags, as the tests use them

from browser import CHROMIUM, FLAGS  # noqa: E402

from textgen.checkpoint import Checkpoint, save_checkpoint  # noqa: E402
from textgen.config import ModelConfig, RunConfig, TrainConfig  # noqa: E402
from textgen.export.formats import export_run  # noqa: E402
from textgen.run import BEST, TOKENIZER, write_config  # noqa: E402
from textgen.sample.sampler import Sampler  # noqa: E402
from textgen.tokenizer import Tokenizer  # noqa: E402
from textgen.weights import weight_shapes  # noqa: E402

VOCAB = 65
PRIMES = ("The ", "\n", "def ", "It was")


def random_run(folder: Path) -> Path:
    """A default-shape LSTM run with random weights (Glorot-like scale), numpy only."""
    shape = ModelConfig(VOCAB)
    rng = np.random.default_rng(0)
    weights = {
        name: (rng.standard_normal(dims) / np.sqrt(dims[0])).astype(np.float32)
        for name, dims in weight_shapes(shape).items()
    }
    run = folder / "run"
    run.mkdir()
    Tokenizer([chr(c) for c in range(32, 32 + VOCAB)]).save(run / TOKENIZER)
    save_checkpoint(run / BEST, Checkpoint(weights))
    write_config(run, RunConfig(shape, TrainConfig()))
    return run


def numpy_rate(sampler: Sampler, prime: str, chars: int, seed: int) -> float:
    start = time.perf_counter()
    produced = sum(len(p) for p in sampler.stream(chars, temperature=0.8, prime=prime, seed=seed))
    return produced / (time.perf_counter() - start)


JS_RATE = """async ([engine, prime, chars, seed]) => {
  window.models = window.models || {};
  const model = window.models[engine] ||
    (window.models[engine] = textgen.load(TEXTGEN_MODEL_DATA, {engine}));
  const start = performance.now();
  const text = await model.generate(prime, {length: chars, temperature: 0.8, seed});
  return Array.from(text).length / ((performance.now() - start) / 1000);
}"""

NODE_RATE = """
const [folder, engine, prime, chars, seed] = process.argv.slice(2);
const textgen = require(folder + "/textgen.js");
const model = textgen.load(require(folder + "/model.js"), { engine });
(async () => {
  const start = performance.now();
  const text = await model.generate(prime, { length: Number(chars), temperature: 0.8,
                                             seed: Number(seed) });
  console.log(Array.from(text).length / ((performance.now() - start) / 1000));
})();
"""


def speed(run: Path, page: Path, work: Path, args, browser) -> None:
    sampler = Sampler.from_checkpoint(run)
    prime = sampler.tokenizer.chars[-1] * 4
    tab = browser.new_page()
    errors = []
    tab.on("pageerror", lambda e: errors.append(str(e)))
    tab.goto((page / "index.html").as_uri())
    tab.wait_for_function("document.getElementById('status').textContent === 'ready'")
    rows = {"1. numpy engine (Sampler.stream)": lambda s: numpy_rate(sampler, prime, args.chars, s)}
    for engine, number in (("wasm-simd", 2), ("js", 3)):
        rows[f"{number}. textgen.js in Chromium, {engine}"] = lambda s, e=engine: tab.evaluate(
            JS_RATE, [e, prime, args.chars, s]
        )
    node = shutil.which("node")
    if node:
        script = work / "rate.js"
        script.write_text(NODE_RATE, encoding="utf-8")
        import subprocess

        for engine, number in (("wasm-simd", 4), ("js", 5)):

            def in_node(s, e=engine):
                command = [node, str(script), str(page), e, prime, str(args.chars), str(s)]
                return float(subprocess.run(command, capture_output=True, check=True).stdout)

            rows[f"{number}. textgen.js in Node, {engine}"] = in_node
    best = {name: 0.0 for name in rows}
    deadline = time.monotonic() + args.seconds
    rounds = 0
    while rounds < 2 or time.monotonic() < deadline:
        for name, measure in rows.items():
            best[name] = max(best[name], measure(rounds))
        rounds += 1
    assert not errors, errors
    base = best["1. numpy engine (Sampler.stream)"]
    print(f"\n{rounds} rounds of {args.chars} characters, best round per row")
    print(f"{'':44s} {'chars/s':>10s} {'x numpy':>8s}")
    for name, rate in best.items():
        print(f"{name:44s} {rate:10,.0f} {rate / base:8.2f}")
    tab.close()


GREEDY = """async ([prime, length]) => {
  const text = await textgen.model.generate(prime, {length, temperature: 0});
  return text;
}"""

LOGITS = "(t) => textgen.model.logits(t).map((r) => Array.from(r))"


def in_page(browser, folder: Path, script: str, arg):
    """``script(arg)`` evaluated in a fresh tab of ``folder``'s page."""
    tab = browser.new_page()
    try:
        tab.goto((folder / "index.html").as_uri())
        tab.wait_for_function("document.getElementById('status').textContent === 'ready'")
        return tab.evaluate(script, arg)
    finally:
        tab.close()


def float16_rows(run: Path, pages: dict[str, Path], args, browser) -> None:
    """Logit error along a sampled text, and where float16's greedy text leaves float32's.

    A greedy sample of a small model soon repeats a loop, and once in one it never leaves,
    so the logits are also compared along a sample drawn at temperature 0.8 (text the model
    finds likely, without loops): how often, and how soon, float16 would choose another
    character than float32 there is what a greedy sample risks at each step.
    """
    sampler = Sampler.from_checkpoint(run)
    n = args.check_chars
    print(f"\nfloat16 against float32 weights in Chromium, {n} characters per prime")
    print(
        f"{'prime':10s} {'max |dlogit|':>13s} {'mean |dlogit|':>14s} {'argmax differs':>15s}"
        f" {'first at':>9s} {'greedy text first differs':>26s}"
    )
    for prime in PRIMES:
        if any(c not in sampler.tokenizer.chars for c in prime):
            continue
        reference = sampler.generate(n, temperature=0, prime=prime)
        greedy = {
            kind: in_page(browser, folder, GREEDY, [prime, n]) for kind, folder in pages.items()
        }
        assert greedy["float32"] == reference, "float32 must match the command line"
        drawn = prime + sampler.generate(n, temperature=0.8, prime=prime, seed=1)
        exact, half = (
            np.array(in_page(browser, pages[k], LOGITS, drawn)) for k in ("float32", "float16")
        )
        error = np.abs(half - exact)
        flips = np.flatnonzero(exact.argmax(axis=1) != half.argmax(axis=1))
        text = greedy["float16"]
        first = next((i for i, (a, b) in enumerate(zip(text, reference)) if a != b), None)
        print(
            f"{prime!r:10s} {error.max():13.5f} {error.mean():14.6f} {len(flips):15d}"
            f" {(str(flips[0]) if len(flips) else 'none'):>9s}"
            f" {('none' if first is None else f'char {first}'):>26s}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, help="a trained run (default: random weights)")
    parser.add_argument("--seconds", type=float, default=20.0, help="time for the speed rows")
    parser.add_argument("--chars", type=int, default=3000, help="characters per timed slice")
    parser.add_argument("--check-chars", type=int, default=2000, help="float16 rows' length")
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    print(f"CPU: {_cpu()}; load average {os.getloadavg()[0]:.2f} at the start")
    with tempfile.TemporaryDirectory() as tmp, sync_playwright() as p:
        work = Path(tmp)
        run = args.run or random_run(work)
        pages = {
            kind: export_run(run, work / kind, "web", weights=kind)
            for kind in ("float16", "float32")
        }
        size = sum(f.stat().st_size for f in pages["float16"].iterdir()) / 1e6
        print(f"folder: {size:.2f} MB with float16 weights")
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        try:
            speed(run, pages["float16"], work, args, browser)
            if args.run:
                float16_rows(run, pages, args, browser)
        finally:
            browser.close()
    print(f"load average {os.getloadavg()[0]:.2f} at the end")


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()} x {os.cpu_count()}"
    except OSError:
        pass
    return "unknown"


if __name__ == "__main__":
    main()
