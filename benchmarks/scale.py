"""Corpus size against speed and memory: ``textgen.prepare`` side by side with a naive reader.

For synthetic corpora of ``--sizes`` MB (1 MB = 1,000,000 bytes) and the built-in ``pysource``
corpus, every measurement runs in a fresh child process, so the peak resident memory reported
(the child's VmHWM) belongs to that measurement alone:

prepare      ``prepare_corpus(path, cache_dir=<empty dir>)``: MB/s of file bytes, by the wall
             clock and by the process's CPU time (other work shares the machine), and peak RSS;
             the fastest of ``--repeat`` runs (and the highest peak), likewise for naive.
             "cached" is a second call in the same process (cache hit: hash + map).
naive        ``text = f.read()``, ``sorted(set(text))``, a dict, ``[index[c] for c in text]``.
train        ``train(path, ...)`` from an empty cache for ``--train-seconds``, default model
             (512-unit LSTM, batch 64, windows of 100): peak RSS of the whole process,
             TensorFlow included ("after import" is the RSS once TensorFlow is imported, before
             ``train``). ``validation_split=0`` so that the time budget is not followed by a
             full pass over the held-out text; training windows come from the same memory map.
naive train  the same training fed by the naive reader (the text kept, the list of ids turned
             into an int64 array, as char-rnn tutorials do) instead of ``prepare_corpus``.
second run   ``train`` in a new run directory beside the first, so the id cache is shared.
             Seconds from calling ``train`` until the corpus is ready (hash + map), the loop
             starts (model and optimizer built, step functions defined), the first batch
             reaches the step function, and the first step ends (which includes tracing the
             step function). The same times are shown for the first run. TensorFlow is
             imported before the clock starts; its import time is shown separately.

Corpus files are generated first and read back from the page cache, so preparation speed is
CPU-bound speed, not disk speed. Other processes share the machine: compare within a run.

    python benchmarks/scale.py                      # 1, 10, 100 MB and pysource
    python benchmarks/scale.py --sizes 1,10 --train-seconds 10 --no-pysource
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
SHAKESPEARE = REPO.parent / "shared" / "corpora" / "tinyshakespeare.txt"
MB = 1_000_000
GOAL_TRAIN_RSS_MB = 1500  # peak resident memory while training on the 100 MB corpus
GOAL_PREPARE_MBPS = 50.0
GOAL_SECOND_RUN_S = 2.0
MARK = "@@result "

# Characters mixed into the synthetic corpora: accents, typographic punctuation, Greek,
# Cyrillic, CJK and one character outside the Basic Multilingual Plane (4 bytes in UTF-8).
ACCENTS = str.maketrans({"e": "é", "a": "à", "o": "ö", "u": "ü", "c": "ç", "n": "ñ", "i": "ï"})
FOREIGN = [
    "Καλημέρα, φίλε μου.",
    "Добрый вечер, друг.",
    "月が綺麗ですね。",
    "— «Quoi ?» dit-elle… “Enfin.” 🙂",
    "Straße, Größe, Übermaß — ½ € 20°C",
]

# --- child programs: each prints one MARK line of JSON ----------------------------------------

_COMMON = """
import json, sys, time
args = json.loads(sys.argv[1])

def hwm_mb():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024

def rss_mb():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024

def report(**values):
    values["peak_mb"] = hwm_mb()
    print("@@result " + json.dumps(values), flush=True)
"""

PREPARE_CHILD = (
    _COMMON
    + """
from textgen.corpus.ids import prepare_corpus
base = rss_mb()
t0, c0 = time.perf_counter(), time.process_time()
prepared = prepare_corpus(args["path"], cache_dir=args["cache"])
cold, cpu = time.perf_counter() - t0, time.process_time() - c0
peak = hwm_mb()
t0 = time.perf_counter()
again = prepare_corpus(args["path"], cache_dir=args["cache"])
warm = time.perf_counter() - t0
assert again.sha256 == prepared.sha256 and len(again.ids) == len(prepared.ids)
report(seconds=cold, cpu=cpu, warm=warm, base_mb=base, prepare_peak_mb=peak,
       chars=len(prepared.ids), vocab=prepared.tokenizer.vocab_size, dtype=str(prepared.ids.dtype))
"""
)

NAIVE_CHILD = (
    _COMMON
    + """
base = rss_mb()
t0, c0 = time.perf_counter(), time.process_time()
with open(args["path"], encoding="utf-8") as f:
    text = f.read()
vocab = sorted(set(text))
index = {c: i for i, c in enumerate(vocab)}
ids = [index[c] for c in text]
seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
report(seconds=seconds, cpu=cpu, base_mb=base, chars=len(ids), vocab=len(vocab))
"""
)

TRAIN_CHILD = (
    _COMMON
    + """
t0 = time.perf_counter()
from textgen.backend import tf  # noqa: F401  (imported before the clock starts)
import_s = time.perf_counter() - t0
import numpy as np
import textgen.training.train as tr
from textgen.corpus.ids import PreparedCorpus
from textgen.tokenizer import Tokenizer

marks = {}
now = time.perf_counter
original_prepare = tr.load_corpus

def timed_prepare(*a, **k):
    result = original_prepare(*a, **k)
    marks["prepared"] = now()
    return result

def naive_prepare(spec, **k):
    global text  # kept, as a tutorial-style script keeps it
    with open(spec, encoding="utf-8") as f:
        text = f.read()
    vocab = sorted(set(text))
    index = {c: i for i, c in enumerate(vocab)}
    ids = np.array([index[c] for c in text])
    marks["prepared"] = now()
    return PreparedCorpus(Tokenizer(vocab), ids, "naive", [])

# The corpus preparation is what is compared, so the naive baseline stands in for it.
tr.load_corpus = naive_prepare if args["naive"] else timed_prepare

class Marks(tr.Callback):
    def on_train_begin(self, state):
        # The first batch is cut from the id array microseconds after the loop starts.
        marks["run"] = marks["first_batch"] = now()

    def on_batch_end(self, state, loss):
        marks.setdefault("first_step", now())

base = rss_mb()
start = now()
result = tr.train(args["path"], run_dir=args["run_dir"], progress=False, echo=lambda s: None,
                  max_time=args["seconds"], validation_split=0.0, callbacks=[Marks()])
report(import_s=import_s, base_mb=base,
       to_prepared=marks["prepared"] - start, to_run=marks["run"] - start,
       to_first_batch=marks["first_batch"] - start, to_first_step=marks["first_step"] - start,
       stopped=result.stopped, epochs=result.epochs_done)
"""
)


def run_child(program: str, args: dict, timeout: float = 3600) -> dict:
    """Run ``program`` in a fresh interpreter and return the values it reported."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=str(REPO))
    proc = subprocess.run(
        [sys.executable, "-c", program, json.dumps(args)],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        check=False,
    )
    for line in proc.stdout.splitlines():
        if line.startswith(MARK):
            return json.loads(line[len(MARK) :])
    sys.stderr.write(proc.stdout[-2000:] + proc.stderr[-4000:])
    raise RuntimeError(f"child failed with exit code {proc.returncode}")


# --- corpora ------------------------------------------------------------------------------------


def source_lines() -> list[str]:
    """Lines to build corpora from: tinyshakespeare if present, else Python's pydocs."""
    if SHAKESPEARE.exists():
        text = SHAKESPEARE.read_text(encoding="utf-8")
    else:
        from textgen.corpus.catalogue import resolve_corpus

        text = resolve_corpus("pydocs", progress=False).read_text(encoding="utf-8")
    return text.splitlines(keepends=True)


def make_corpus(path: Path, size_mb: float, seed: int = 0) -> Path:
    """Write about ``size_mb`` MB of shuffled lines with some non-ASCII text mixed in.

    Every pass over the source lines is shuffled anew, about 1 line in 40 gets accented
    letters and about 1 in 400 is a foreign-script line, so every chunk of the file holds
    non-ASCII characters and no long stretch repeats.
    """
    target = int(size_mb * MB)
    if path.exists() and path.stat().st_size == target:
        return path
    rng = np.random.default_rng(seed)
    lines = source_lines()
    accented = [line.translate(ACCENTS) for line in lines]
    foreign = [line + "\n" for line in FOREIGN]
    written = 0
    tmp = path.with_suffix(".part")
    with tmp.open("wb") as out:
        while written < target:
            order = rng.permutation(len(lines))
            roll = rng.random(len(lines))
            parts = []
            for i, r in zip(order.tolist(), roll.tolist()):
                if r < 0.0025:
                    parts.append(foreign[i % len(foreign)])
                parts.append(accented[i] if r < 0.025 else lines[i])
            data = "".join(parts).encode("utf-8")
            if written + len(data) > target:  # end on a whole line, padded with newlines
                room = target - written
                cut = data.rfind(b"\n", 0, room) + 1
                data = data[:cut] + b"\n" * (room - cut)
            out.write(data)
            written += len(data)
    os.replace(tmp, path)
    return path


# --- measurements -------------------------------------------------------------------------------


def best_of(repeat: int, program: str, args: dict, cache: Path | None = None) -> dict:
    """The fastest of ``repeat`` runs (each from an empty ``cache``), with the highest peak."""
    runs = []
    for _ in range(max(1, repeat)):
        if cache is not None:
            shutil.rmtree(cache, ignore_errors=True)
            args = {**args, "cache": str(cache)}
        runs.append(run_child(program, args))
    if cache is not None:
        shutil.rmtree(cache, ignore_errors=True)
    best = min(runs, key=lambda run: run["seconds"])
    for key in ("peak_mb", "prepare_peak_mb"):
        if key in best:
            best[key] = max(run[key] for run in runs)
    return best


def measure(name: str, path: Path, work: Path, args: argparse.Namespace) -> dict:
    """Every measurement for one corpus; prints progress to stderr."""
    size = path.stat().st_size
    row: dict = {"name": name, "mb": size / MB}

    def note(what: str) -> None:
        print(f"[{name}] {what} ...", file=sys.stderr, flush=True)

    base = work / f"runs-{name}"
    shutil.rmtree(base, ignore_errors=True)
    note("prepare")
    row["prepare"] = best_of(args.repeat, PREPARE_CHILD, {"path": str(path)}, base / "cache")
    if not args.skip_naive:
        note("naive")
        row["naive"] = best_of(args.repeat, NAIVE_CHILD, {"path": str(path)})
    if not args.skip_train:
        note("train")
        train_args = {"path": str(path), "seconds": args.train_seconds, "naive": False}
        row["train"] = run_child(TRAIN_CHILD, {**train_args, "run_dir": str(base / "one" / "a")})
        note("second run")
        second = {**train_args, "seconds": 1.0, "run_dir": str(base / "one" / "b")}
        row["second"] = run_child(TRAIN_CHILD, second)
        if not args.skip_naive:
            note("naive train")
            naive = {**train_args, "naive": True, "run_dir": str(base / "naive" / "a")}
            row["naive_train"] = run_child(TRAIN_CHILD, naive)
    shutil.rmtree(base, ignore_errors=True)
    return row


def _table(columns: list[tuple[str, int]], rows: list[list[str]]) -> None:
    print("  ".join(title.rjust(width) for title, width in columns))
    for cells in rows:
        print("  ".join(cell.rjust(width) for cell, (_, width) in zip(cells, columns)))


def _mb(values: dict | None, field: str) -> str:
    return "-" if not values else f"{values[field]:.0f} MB"


def _speed(row: dict, key: str) -> str:
    values = row.get(key)
    if not values:
        return "-"
    return f"{row['mb'] / values['seconds']:.1f} / {row['mb'] / max(values['cpu'], 1e-9):.1f}"


def print_tables(rows: list[dict]) -> None:
    """Print the measurements as two fixed-width tables."""
    print("Preparation (MB/s as wall clock / CPU time of the process; peak = VmHWM)")
    _table(
        [
            ("corpus", 9),
            ("MB", 6),
            ("chars", 11),
            ("vocab", 5),
            ("ids", 6),
            ("textgen MB/s", 14),
            ("peak", 8),
            ("cached s", 8),
            ("naive MB/s", 12),
            ("naive peak", 10),
        ],
        [
            [
                row["name"],
                f"{row['mb']:.1f}",
                f"{row['prepare']['chars']:,}",
                str(row["prepare"]["vocab"]),
                row["prepare"]["dtype"],
                _speed(row, "prepare"),
                _mb(row["prepare"], "prepare_peak_mb"),
                f"{row['prepare']['warm']:.2f}",
                _speed(row, "naive"),
                _mb(row.get("naive"), "peak_mb"),
            ]
            for row in rows
        ],
    )
    base = max(row["prepare"]["base_mb"] for row in rows)
    print(
        "cached s: a second prepare_corpus call on the same corpus (hash + map). peak includes\n"
        f"the interpreter and numpy ({base:.0f} MB before preparing)."
    )
    if not any("train" in row for row in rows):
        return
    print()
    print("Training (peak = VmHWM of the whole process, TensorFlow included)")
    _table(
        [
            ("corpus", 9),
            ("textgen peak", 12),
            ("naive peak", 10),
            ("after import", 12),
            ("1st run: ready", 14),
            ("1st step", 8),
            ("2nd run: ready", 14),
            ("loop", 6),
            ("1st batch", 9),
            ("1st step", 8),
        ],
        [
            [
                row["name"],
                _mb(row.get("train"), "peak_mb"),
                _mb(row.get("naive_train"), "peak_mb"),
                _mb(row.get("train"), "base_mb"),
                f"{row['train']['to_prepared']:.2f} s",
                f"{row['train']['to_first_step']:.2f} s",
                f"{row['second']['to_prepared']:.2f} s",
                f"{row['second']['to_run']:.2f} s",
                f"{row['second']['to_first_batch']:.2f} s",
                f"{row['second']['to_first_step']:.2f} s",
            ]
            for row in rows
            if "train" in row
        ],
    )
    imports = max(row["second"]["import_s"] for row in rows if "second" in row)
    print(
        "after import: RSS once TensorFlow is imported, before train(). 1st run (empty cache)\n"
        "and 2nd run (a new run directory beside the first, so the cache is shared): seconds\n"
        "from calling train() until the corpus is ready (hash + map), the loop starts (model\n"
        "and optimizer built), the first batch reaches the step function and the first step\n"
        "ends (the step function traced and run once).\n"
        f"Importing TensorFlow ({imports:.1f} s at most) comes before and is not counted."
    )


def _verdict(seconds: float) -> str:
    return "met" if seconds <= GOAL_SECOND_RUN_S else "NOT met"


def check_goals(rows: list[dict]) -> None:
    """Say whether each goal is met."""
    print()
    for row in rows:
        speed = row["mb"] / row["prepare"]["seconds"]
        cpu = row["mb"] / max(row["prepare"]["cpu"], 1e-9)
        verdict = "met" if speed >= GOAL_PREPARE_MBPS else "NOT met"
        print(
            f"{row['name']}: preparation {speed:.0f} MB/s wall, {cpu:.0f} MB/s CPU "
            f"(goal >= {GOAL_PREPARE_MBPS:.0f}): {verdict}"
        )
        if "second" in row:
            second = row["second"]
            batch, step = second["to_first_batch"], second["to_first_step"]
            print(
                f"{row['name']}: second run, first batch at the step function after {batch:.2f}"
                f" s: {_verdict(batch)}; first step done after {step:.2f} s: {_verdict(step)}"
                f" (goal <= {GOAL_SECOND_RUN_S:g} s)"
            )
        if row["name"] == "100MB" and "train" in row:
            peak = row["train"]["peak_mb"]
            verdict = "met" if peak < GOAL_TRAIN_RSS_MB else "NOT met"
            goal = f"goal < {GOAL_TRAIN_RSS_MB} MB"
            print(f"100MB: peak RSS while training {peak:.0f} MB ({goal}): {verdict}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1,10,100", help="comma-separated sizes in MB")
    parser.add_argument("--train-seconds", type=float, default=20.0, help="training budget")
    parser.add_argument("--no-pysource", action="store_true", help="skip the pysource corpus")
    parser.add_argument("--skip-train", action="store_true", help="measure preparation only")
    parser.add_argument("--skip-naive", action="store_true", help="leave out the naive reader")
    parser.add_argument(
        "--repeat", type=int, default=3, help="preparation runs per corpus (the fastest is shown)"
    )
    parser.add_argument("--workdir", type=Path, help="reuse this folder (default: a temp dir)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """Generate the corpora, measure each and print the table."""
    args = parse_args(argv)
    sizes = [float(s) for s in args.sizes.split(",") if s.strip()]
    work = args.workdir or Path(tempfile.mkdtemp(prefix="textgen-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    corpora: list[tuple[str, Path]] = []
    try:
        for size in sizes:
            label = f"{size:g}MB"
            print(f"[{label}] generating ...", file=sys.stderr, flush=True)
            corpora.append((label, make_corpus(work / f"synthetic-{size:g}mb.txt", size)))
        if not args.no_pysource:
            os.environ["TEXTGEN_CORPUS_DIR"] = str(work / "corpora")
            sys.path.insert(0, str(REPO))
            from textgen.corpus.catalogue import resolve_corpus

            corpora.append(("pysource", resolve_corpus("pysource", progress=False)))
        started, load_before = time.monotonic(), os.getloadavg()[0]
        rows = [measure(name, path, work, args) for name, path in corpora]
        print(f"measured in {time.monotonic() - started:.0f} s", file=sys.stderr)
        load = os.getloadavg()[0]
        print(f"load average {load_before:.1f} before, {load:.1f} after ({os.cpu_count()} CPUs)")
        print_tables(rows)
        check_goals(rows)
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
