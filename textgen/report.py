"""Human-readable description of a run directory (``textgen info``)."""

from __future__ import annotations

import io
import json
from contextlib import redirect_stdout
from pathlib import Path

from textgen.evaluation import describe_loss
from textgen.run import HISTORY, open_run, read_history


def describe_run(run_dir: Path) -> str:
    """Config, vocabulary size, epochs done, best validation loss and the Keras summary."""
    run = open_run(run_dir, "latest")
    state = run.state
    lines = [f"run directory: {run.run_dir}"]
    source = run.config.init_from
    if source:
        sha = str(source.get("corpus_sha256") or "unknown")[:12]
        lines.append(
            f"started from: {source.get('source')} ({source.get('path')}; its corpus sha256 {sha})"
        )
    lines.append("config:")
    config = json.dumps(run.config.to_json(), indent=2, sort_keys=True)
    lines += ["  " + line for line in config.splitlines()]
    shown = "".join(run.tokenizer.chars)
    lines.append(f"vocabulary: {run.tokenizer.vocab_size} ids: {shown!r}")
    lines.append(f"epochs done: {state.epoch} (+{state.batch} batches), steps {state.step}")
    best = state.best_val_loss
    lines.append(f"best validation loss: {describe_loss(best)}")
    lines.append(f"training time: {state.seconds:.0f} s")
    rows = read_history(run.run_dir)
    if rows:
        lines.append(f"history: {len(rows)} rows in {run.run_dir / HISTORY}")
    buffer = io.StringIO()
    with redirect_stdout(buffer):
        run.build_model().summary(line_length=90)
    lines.append(buffer.getvalue().rstrip())
    return "\n".join(lines)
