"""Watching training: the per-epoch sample and TensorBoard's event files, read back with
TensorBoard's own reader."""

from __future__ import annotations

import shutil

from conftest import TINY, make_text
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from textgen import Callback, train
from textgen import run as rundir

SCALARS = {
    "train/loss",
    "train/bpc",
    "train/learning_rate",
    "train/chars_per_second",
    "train/grad_norm",
    "epoch/train_loss",
    "validation/loss",
    "validation/bpc",
}


def _events(run) -> EventAccumulator:
    events = EventAccumulator(str(run / rundir.TENSORBOARD), size_guidance={"tensors": 0})
    events.Reload()
    return events


def _steps(events: EventAccumulator, tag: str) -> list[int]:
    return [e.step for e in events.Tensors(tag)]


def test_two_epochs_then_resume_to_three_log_every_series_rising(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(make_text(400))
    lines: list[str] = []
    settings = {**TINY, "epochs": 2}
    train(corpus, run_dir=tmp_path / "run", progress=False, echo=lines.append, **settings)
    first = _events(tmp_path / "run")
    assert SCALARS | {"samples"} <= set(first.Tags()["tensors"])
    epoch_steps = _steps(first, "validation/loss")
    assert len(epoch_steps) == 2

    train(corpus, run_dir=tmp_path / "run", resume=True, progress=False, echo=lines.append,
          epochs=3)  # fmt: skip
    events = _events(tmp_path / "run")
    for tag in SCALARS | {"samples"}:
        steps = _steps(events, tag)
        assert steps == sorted(set(steps)), tag  # rising, no step twice
    assert len(_steps(events, "validation/loss")) == 3
    assert len(_steps(events, "samples")) == 3
    text = events.Tensors("samples")[-1].tensor_proto.string_val[0].decode()
    assert len(text) == 200
    # The sample is printed under its epoch's loss line.
    at = next(i for i, line in enumerate(lines) if line.startswith("epoch 3:"))
    assert lines[at + 1].startswith("sample after epoch 3:") and text in lines[at + 1]


def test_a_replayed_stretch_is_not_logged_twice(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(make_text(400))
    quiet = dict(progress=False, echo=lambda _: None)
    saved = tmp_path / "latest-after-epoch-1.npz"

    class KeepEpochOne(Callback):
        def on_epoch_end(self, state, epoch):
            if state.epoch == 1:
                shutil.copy(tmp_path / "run" / rundir.LATEST, saved)

    train(corpus, run_dir=tmp_path / "run", callbacks=[KeepEpochOne()], **quiet,
          **{**TINY, "epochs": 2})  # fmt: skip
    # As if the process died after logging epoch 2 but before its checkpoint landed.
    shutil.copy(saved, tmp_path / "run" / rundir.LATEST)
    train(corpus, run_dir=tmp_path / "run", resume=True, **quiet)
    events = _events(tmp_path / "run")
    for tag in SCALARS | {"samples"}:
        steps = _steps(events, tag)
        assert steps == sorted(set(steps)), tag
    assert len(_steps(events, "validation/loss")) == 2


def test_watching_can_be_turned_off(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(make_text())
    lines: list[str] = []
    train(corpus, run_dir=tmp_path / "run", progress=False, echo=lines.append,
          tensorboard=False, sample_every=0, **TINY)  # fmt: skip
    assert not (tmp_path / "run" / rundir.TENSORBOARD).exists()
    assert not any(line.startswith("sample after") for line in lines)
