"""Quality per minute: best validation loss on Tiny Shakespeare within a wall-clock budget.

Usage: python benchmarks/quality.py [--minutes 10] [--corpus PATH] [--set key=value ...]
       python benchmarks/quality.py --lever defaults={} --lever average={"weight_average":0.998}

Trains with textgen's default settings (only the time budget given, as a user would), on the
first 90% of the text with the last 10% held out (the split nanoGPT uses), and prints the best
validation loss in nats and bits per character next to published and measured reference points.

The best checkpoint is then scored twice on the held-out text: as training measured it (every
window of ``seq_length`` read after ``validation_context`` preceding characters, as the sampler
reads text), and with every window started from a zero state, which is how the stock Keras and
PyTorch reference points were measured.

With ``--lever NAME=JSON`` (repeatable) it trains once per lever, one after another with the
same budget, each with the defaults plus the lever's settings (and any ``--set``), and prints a
table: the lever, its epochs, and the best checkpoint's loss with context and from zero states.
The levers run in turn, not side by side, so on a shared machine compare them by epochs as well
as by loss.
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_CORPUS = REPO.parent / "shared" / "corpora" / "tinyshakespeare.txt"
REFERENCES = [
    ("interpolated 5-gram model (published)", 1.69),
    ("stock Keras LSTM 512, 10 min on this machine type", 1.536),
    ("PyTorch nn.LSTM 512, 10 min, best epoch", 1.501),
    ("nanoGPT CPU recipe, 9.5 min", 1.50),
    ("nanoGPT 10.6M-parameter transformer on an A100 (published)", 1.47),
]


def _parse_setting(text: str) -> tuple[str, object]:
    key, _, value = text.partition("=")
    try:
        return key, json.loads(value)
    except ValueError:
        return key, value


def score_best(run_dir: Path, corpus: Path, config) -> tuple[float, float]:
    """Loss of ``best.npz`` on the held-out ids: with the run's context, and from zero states."""
    from textgen.corpus.reading import read_corpus
    from textgen.training.evaluation import evaluate_ids, run_scorer
    from textgen.training.windows import split_ids

    tokenizer, step, _ = run_scorer(run_dir, "best")
    ids = tokenizer.encode(read_corpus(corpus))
    valid = split_ids(ids, config.validation_split, config.seq_length).valid
    seq = config.seq_length
    return tuple(evaluate_ids(step, valid, seq, context=c) for c in (config.validation_context, 0))


def run_once(args, overrides: dict, keep: Path | None):
    """Train with the defaults, the budget and ``overrides``; score the best checkpoint."""
    from textgen.training.train import TrainConfig, train

    settings = {"validation_split": 0.1, "max_time": args.minutes * 60, **overrides}
    config = TrainConfig(**settings)
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = keep or Path(tmp) / "run"
        started = time.monotonic()
        result = train(args.corpus, run_dir=run_dir, progress=False, **settings)
        elapsed = time.monotonic() - started
        history = (run_dir / "history.csv").read_text()
        with_context, zero_state = score_best(run_dir, args.corpus, config)
    return result, config, elapsed, history, with_context, zero_state


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS)
    parser.add_argument("--set", action="append", default=[], help="override a setting: k=v")
    parser.add_argument("--keep", type=Path, help="train into this run directory and keep it")
    parser.add_argument(
        "--lever", action="append", default=[], help='NAME=JSON settings, e.g. avg={"dropout":0.4}'
    )
    args = parser.parse_args()
    if not args.corpus.is_file():
        raise SystemExit(f"corpus not found: {args.corpus}")

    overrides = dict(_parse_setting(s) for s in args.set)
    if args.lever:
        levers = [lever.partition("=") for lever in args.lever]
        print(f"{'lever':12s} {'settings':44s} {'epochs':>6s} {'context':>8s} {'zero':>7s}")
        for name, _, value in levers:
            extra = {**overrides, **json.loads(value or "{}")}
            result, config, elapsed, _, with_context, zero_state = run_once(args, extra, None)
            print(
                f"{name:12s} {json.dumps(extra):44s} {result.epochs_done:6.2f} "
                f"{with_context:8.4f} {zero_state:7.4f}",
                flush=True,
            )
        return
    result, config, elapsed, history, with_context, zero_state = run_once(
        args, overrides, args.keep
    )
    print(
        f"\nbudget {args.minutes:g} min, wall time {elapsed / 60:.1f} min, "
        f"{result.epochs_done:.2f} epochs, stopped: {result.stopped}"
    )
    print("settings:", json.dumps({k: v for k, v in vars(config).items()}, sort_keys=True))
    print("\nhistory:\n" + history)
    best = result.best_val_loss
    print(f"{'model':60s} {'val nats':>9s} {'val bpc':>8s}")
    for name, loss in REFERENCES:
        print(f"{name:60s} {loss:9.3f} {loss / math.log(2):8.3f}")
    rows = [
        ("textgen, best validation loss during training", best),
        (f"textgen best.npz, {config.validation_context} chars of context", with_context),
        ("textgen best.npz, each window from a zero state", zero_state),
    ]
    for name, loss in rows:
        print(f"{name:60s} {loss:9.3f} {loss / math.log(2):8.3f}")


if __name__ == "__main__":
    main()
