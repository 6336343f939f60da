"""Shared fixtures: tiny corpora and a tiny trained run, so the suite stays fast."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

WORDS = [
    "the",
    "quick",
    "brown",
    "fox",
    "jumps",
    "over",
    "a",
    "lazy",
    "dog",
    "while",
    "cats",
    "nap",
    "on",
    "warm",
    "mats",
]


def make_text(n_lines: int = 60, seed: int = 0) -> str:
    """A few thousand characters of word salad with a small alphabet."""
    rng = random.Random(seed)
    lines = [
        " ".join(rng.choice(WORDS) for _ in range(8)).capitalize() + "." for _ in range(n_lines)
    ]
    return "\n".join(lines) + "\n"


TINY = dict(
    epochs=2,
    batch_size=8,
    seq_length=16,
    embedding_dim=4,
    units=8,
    dropout=0.1,
    validation_split=0.1,
    checkpoint_every=3600.0,
)


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    path = tmp_path / "corpus.txt"
    path.write_text(make_text(), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory) -> Path:
    """One tiny run trained once for the whole session (read-only for tests)."""
    from textgen.training import train

    root = tmp_path_factory.mktemp("run")
    path = root / "corpus.txt"
    path.write_text(make_text(), encoding="utf-8")
    train(path, run_dir=root / "run", progress=False, echo=lambda _: None, **TINY)
    return root / "run"
