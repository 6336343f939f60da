"""Human-readable description of a run directory (``textgen info``)."""

from __future__ import annotations

import csv
import io
import json
from contextlib import redirect_stdout
from pathlib import Path

from textgen import checkpoint as ckpt
from textgen.tokenizer import Tokenizer


def describe_run(run_dir: Path) -> str:
    """Config, vocabulary size, epochs done, best validation loss and the Keras summary."""
    config = ckpt.read_config(run_dir)
    tokenizer = Tokenizer.load(run_dir / ckpt.TOKENIZER)
    latest = ckpt.load_checkpoint(ckpt.weights_file(run_dir, "latest"))
    state = latest.state
    lines = [f"run directory: {run_dir}", "config:"]
    lines += ["  " + line for line in json.dumps(config, indent=2, sort_keys=True).splitlines()]
    shown = "".join(tokenizer.chars)
    lines.append(f"vocabulary: {tokenizer.vocab_size} ids: {shown!r}")
    epoch, batch, step = (state.get(k, 0) for k in ("epoch", "batch", "step"))
    lines.append(f"epochs done: {epoch} (+{batch} batches), steps {step}")
    best = state.get("best_val_loss")
    lines.append(
        "best validation loss: "
        + ("n/a" if best is None else f"{best:.4f} nats ({best / 0.6931471805599453:.4f} bpc)")
    )
    lines.append(f"training time: {state.get('seconds', 0.0):.0f} s")
    history = run_dir / ckpt.HISTORY
    if history.exists():
        rows = list(csv.DictReader(io.StringIO(history.read_text(encoding="utf-8"))))
        lines.append(f"history: {len(rows)} rows in {history}")
    lines.append(_summary(config, latest.weights))
    return "\n".join(lines)


def _summary(config: dict, weights) -> str:
    from textgen.model import model_from_config

    model = model_from_config(config["model"], weights)
    buffer = io.StringIO()
    with redirect_stdout(buffer):
        model.summary(line_length=90)
    return buffer.getvalue().rstrip()
