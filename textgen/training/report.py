"""Human-readable description of a run directory (``textgen info``)."""

from __future__ import annotations

import contextlib
import io
import json
import os
from contextlib import redirect_stdout
from pathlib import Path
from typing import Any

from textgen.run import HISTORY, open_run, read_history
from textgen.training.evaluation import describe_loss

# config.json's sections in the order a reader wants them: the network, how it trained, on what.
SECTIONS = ("model", "training", "corpus", "init_from")
# Keras's summary gives its three columns 45%, 35% and 20% of the line; each cell also needs a
# space either side and a border. Output shapes are not known before the model is called, so
# theirs is a bound: "(None, None, 100000)" is 20 characters.
_COLUMN_SHARES = (0.45, 0.35, 0.20)
_SHAPE_WIDTH = 24
_CELL_PADDING = 3
_MIN_SUMMARY_WIDTH = 90


def run_config_json(run_dir: Path) -> str:
    """``config.json``'s content as indented JSON (``textgen info --json``)."""
    return json.dumps(open_run(run_dir, "latest").config.to_json(), indent=2, sort_keys=True)


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
    lines += config_lines(run.config.to_json())
    shown = "".join(run.tokenizer.chars)
    lines.append(f"vocabulary: {run.tokenizer.vocab_size} ids: {shown!r}")
    lines.append(f"epochs done: {state.epoch} (+{state.batch} batches), steps {state.step}")
    lines.append(f"best validation loss: {describe_loss(state.best_val_loss)}")
    lines.append(f"training time: {state.seconds:.0f} s")
    rows = read_history(run.run_dir)
    if rows:
        lines.append(f"history: {len(rows)} rows in {run.run_dir / HISTORY}")
    lines.append(model_summary(run.build_model()))
    return "\n".join(lines)


def config_lines(config: dict[str, Any]) -> list[str]:
    """A run's config as ``key: value`` lines under a heading per section."""
    lines = []
    for section in [*SECTIONS, *sorted(set(config) - set(SECTIONS))]:
        values = config.get(section)
        if not values:
            continue
        lines.append(f"{section}:")
        lines += [f"  {key}: {_readable(value)}" for key, value in sorted(values.items())]
    return lines


def _readable(value: Any) -> str:
    """A config value as a person writes it: strings bare, None as none, lists as JSON."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)):
        return repr(value)
    return json.dumps(value, sort_keys=True)


def model_summary(model) -> str:
    """The Keras summary of ``model``, whole, whether or not the output is a terminal.

    Keras draws it with rich, which cuts every line at the terminal's width, or at 80 columns
    when the output is a pipe or a file: the parameter counts were lost. The width is set from
    the longest layer name and parameter count instead.
    """
    names = max(len(f"{layer.name} ({type(layer).__name__})") for layer in model.layers)
    params = len(f"{model.count_params():,}")
    needed = [names, _SHAPE_WIDTH, params]
    width = max(
        _MIN_SUMMARY_WIDTH,
        *(int((cell + _CELL_PADDING) / share) + 1 for cell, share in zip(needed, _COLUMN_SHARES)),
    )
    buffer = io.StringIO()
    # rich and shutil read the width from COLUMNS before asking the terminal.
    with _environment(COLUMNS=str(width + 4)), redirect_stdout(buffer):
        model.summary(line_length=width)
    return buffer.getvalue().rstrip()


@contextlib.contextmanager
def _environment(**values: str):
    """Set environment variables for the duration of a block, then restore them."""
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
