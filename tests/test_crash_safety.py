"""SIGKILL at any moment, even halfway through a checkpoint write, costs at most the work done
since the last complete checkpoint.

Real training processes are killed (mid-epoch, right at an epoch boundary, and inside
``numpy.savez`` while ``latest.npz`` is being written). After every kill the run directory must
load and sample, and resuming it must end with the weights of a run that was never killed.
"""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY, make_text

from textgen import CheckpointError, Sampler, Tokenizer
from textgen import run as ckpt
from textgen.checkpoint import Checkpoint, load_checkpoint
from textgen.training.train import HISTORY_FIELDS, train

REPO = Path(__file__).resolve().parents[1]
# Checkpoints are written after almost every batch, so kills land anywhere in the save cycle.
SETTINGS = {**TINY, "epochs": 3, "checkpoint_every": 0.05}
FINAL_NAMES = {
    ckpt.CONFIG,
    ckpt.TOKENIZER,
    ckpt.LATEST,
    ckpt.BEST,
    ckpt.HISTORY,
    ckpt.LOCK,
    ckpt.LOCK_HOLDER,
    ckpt.TENSORBOARD,
}
# atomic_write's temporary names: ".<final name>.<random>.tmp"
TEMP_NAME = re.compile("|".join(rf"\.{re.escape(name)}\..+\.tmp" for name in FINAL_NAMES))

# The training process. With "stall_from_step", the first write of latest.npz whose state is at
# or past that step puts half of the archive into the temporary file, flushes it to disk,
# announces itself through the marker file and hangs there until it is killed. With
# "save_pause", every checkpoint write sleeps that many seconds afterwards, so that a tiny model
# on a fast machine cannot run through the epoch between the moment the test decides to kill and
# the kill itself.
CHILD = r"""
import io, json, os, sys, time
import numpy as np

args = json.loads(sys.argv[1])
if args.get("save_pause"):
    unpaused_savez = np.savez

    def pausing_savez(file, **arrays):
        unpaused_savez(file, **arrays)
        time.sleep(args["save_pause"])

    np.savez = pausing_savez
if args.get("stall_from_step") is not None:
    real_savez = np.savez

    def stalling_savez(file, **arrays):
        state = json.loads(str(arrays["state"]))
        is_latest = any(key.startswith("opt/") for key in arrays)  # best.npz has no optimizer
        if is_latest and state["step"] >= args["stall_from_step"]:
            buffer = io.BytesIO()
            real_savez(buffer, **arrays)
            data = buffer.getvalue()
            file.write(data[: len(data) // 2])
            file.flush()
            os.fsync(file.fileno())
            marker = args["marker"]
            with open(marker + ".part", "w") as out:
                json.dump({"step": state["step"], "written": len(data) // 2}, out)
            os.replace(marker + ".part", marker)
            time.sleep(600)
        real_savez(file, **arrays)

    np.savez = stalling_savez

from textgen.training.train import train

train(
    args["corpus"],
    run_dir=args["run_dir"],
    resume=args["resume"],
    progress=False,
    echo=lambda _: None,
    **args["settings"],
)
"""


def _quiet(**kw):
    return dict(progress=False, echo=lambda _: None, **kw)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """A corpus and a run trained on it without interruption, shared by the tests below."""
    root = tmp_path_factory.mktemp("crash")
    corpus = root / "corpus.txt"
    corpus.write_text(make_text(300), encoding="utf-8")
    train(corpus, run_dir=root / "straight", **_quiet(**SETTINGS))
    final = load_checkpoint(root / "straight" / ckpt.LATEST)
    steps_per_epoch = final.state.step // SETTINGS["epochs"]
    assert final.state.epoch == SETTINGS["epochs"] and steps_per_epoch >= 40
    return corpus, final, steps_per_epoch


@pytest.fixture
def spawn(tmp_path):
    """Start training processes; any still alive at the end of the test is killed."""
    children: list[tuple[subprocess.Popen, Path]] = []
    env = {
        **os.environ,
        "TF_CPP_MIN_LOG_LEVEL": "3",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }

    def start(**args) -> tuple[subprocess.Popen, Path]:
        log = tmp_path / f"child{len(children)}.log"
        with log.open("wb") as out:
            child = subprocess.Popen(
                [sys.executable, "-c", CHILD, json.dumps(args)],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=tmp_path,
            )
        children.append((child, log))
        return child, log

    yield start
    for child, _ in children:
        if child.poll() is None:
            child.kill()
            child.wait()


def _wait_for(child, log: Path, condition, what: str, timeout: float = 90.0):
    """Poll ``condition`` until it returns something truthy while the child keeps training."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        if child.poll() is not None:
            pytest.fail(
                f"training exited with {child.returncode} before {what}:\n"
                + log.read_text(errors="replace")[-3000:]
            )
        time.sleep(0.01)
    pytest.fail(f"timed out waiting for {what}")


def _latest_state(run: Path) -> dict | None:
    """The loop state in latest.npz, read while training may be replacing it."""
    path = run / ckpt.LATEST
    return load_checkpoint(path).state.to_json() if path.exists() else None


def _sigkill(child) -> None:
    assert child.poll() is None, "training finished before it could be killed"
    os.kill(child.pid, signal.SIGKILL)
    assert child.wait(timeout=30) == -signal.SIGKILL


def _assert_intact(run: Path) -> dict:
    """Every file under a final name is complete; anything else is a leftover temporary file."""
    names = {p.name for p in run.iterdir()}
    strays = [n for n in names - FINAL_NAMES if not TEMP_NAME.fullmatch(n)]
    assert not strays, strays
    assert ckpt.read_config(run).training.units == SETTINGS["units"]
    assert Tokenizer.load(run / ckpt.TOKENIZER).vocab_size > 10
    latest = load_checkpoint(run / ckpt.LATEST)
    assert latest.optimizer and latest.weights
    if (run / ckpt.BEST).exists():
        assert load_checkpoint(run / ckpt.BEST).weights
    if (run / ckpt.HISTORY).exists():
        with (run / ckpt.HISTORY).open(newline="") as handle:
            reader = csv.DictReader(handle)
            rows = list(reader)
        assert reader.fieldnames == HISTORY_FIELDS
        assert all(None not in row.values() and None not in row for row in rows)
    for which in ("best", "latest"):
        assert len(Sampler.from_checkpoint(run, which=which).generate(20, seed=0)) == 20
    return latest.state.to_json()


def _assert_events_rise(log_dir: Path, last_step: int) -> None:
    """TensorBoard's own reader sees every series rise, with no step twice, to the last step."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "tensors": 0})
    events.Reload()
    tags = events.Tags()["tensors"]  # tf.summary writes scalars and text as tensors
    assert {"train/loss", "validation/loss", "samples"} <= set(tags)
    for tag in tags:
        steps = [e.step for e in events.Tensors(tag)]
        assert steps == sorted(set(steps)), tag
    assert events.Tensors("validation/loss")[-1].step == last_step


def _resume_and_compare(corpus: Path, run: Path, final: Checkpoint) -> None:
    result = train(corpus, run_dir=run, resume=True, **_quiet())
    assert result.stopped == "completed"
    assert result.epochs_done == SETTINGS["epochs"]
    _assert_intact(run)
    resumed = load_checkpoint(run / ckpt.LATEST)
    assert resumed.state.step == final.state.step
    assert resumed.weights.keys() == final.weights.keys()
    for name, value in final.weights.items():
        np.testing.assert_allclose(resumed.weights[name], value, atol=1e-5, err_msg=name)
    _assert_events_rise(run / ckpt.TENSORBOARD, final.state.step)
    assert len(resumed.optimizer) == len(final.optimizer)
    for got, expected in zip(resumed.optimizer, final.optimizer):
        np.testing.assert_allclose(got, expected, atol=1e-5)


def test_sigkill_mid_epoch_and_at_an_epoch_boundary_then_resume(tmp_path, reference, spawn):
    corpus, final, per_epoch = reference
    run = tmp_path / "run"
    args = dict(
        corpus=str(corpus), run_dir=str(run), settings=SETTINGS, resume=False, save_pause=0.05
    )

    # Kill 1: a fresh run, somewhere inside the first epoch.
    child, log = spawn(**args)
    _wait_for(
        child,
        log,
        lambda: (_latest_state(run) or {}).get("step", 0) >= per_epoch // 3,
        "a checkpoint a third into the first epoch",
    )
    time.sleep(0.13)  # off the checkpoint that was just seen
    _sigkill(child)
    first = _assert_intact(run)
    assert 0 < first["step"] < per_epoch and first["epoch"] == 0

    # Kill 2: the same run resumed, the moment the end-of-epoch-2 checkpoint shows up (best.npz
    # and history.csv are being written around then).
    child, log = spawn(**{**args, "resume": True, "settings": {}})
    _wait_for(
        child,
        log,
        lambda: (_latest_state(run) or {}).get("epoch", 0) >= 2,
        "the end of the second epoch",
    )
    _sigkill(child)
    second = _assert_intact(run)
    assert second["epoch"] == 2 and second["step"] >= 2 * per_epoch > first["step"]

    _resume_and_compare(corpus, run, final)


def test_sigkill_during_a_checkpoint_write_keeps_the_previous_checkpoint(
    tmp_path, reference, spawn
):
    corpus, final, per_epoch = reference
    run, marker = tmp_path / "run", tmp_path / "stalled.json"
    stall_from = per_epoch + per_epoch // 2  # in the middle of the second epoch
    child, log = spawn(
        corpus=str(corpus),
        run_dir=str(run),
        settings=SETTINGS,
        resume=False,
        stall_from_step=stall_from,
        marker=str(marker),
    )
    _wait_for(child, log, marker.exists, "a checkpoint write to stall")
    stalled = json.loads(marker.read_text())
    before = (run / ckpt.LATEST).read_bytes()
    temps = [p for p in run.iterdir() if p.name.startswith(f".{ckpt.LATEST}.")]
    assert len(temps) == 1 and TEMP_NAME.fullmatch(temps[0].name)
    partial = temps[0]
    _sigkill(child)

    # The half-written archive stayed under its temporary name; latest.npz is the previous,
    # complete checkpoint.
    assert partial.exists() and partial.stat().st_size == stalled["written"]
    with pytest.raises(CheckpointError, match="damaged"):
        load_checkpoint(partial)
    assert (run / ckpt.LATEST).read_bytes() == before
    state = _assert_intact(run)
    assert per_epoch <= state["step"] < stalled["step"]
    assert stalled["step"] >= stall_from

    # The leftover neither breaks sampling nor resuming.
    assert ckpt.find_latest_run(tmp_path) == run
    _resume_and_compare(corpus, run, final)
