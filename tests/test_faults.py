"""A run directory has one writer, and a full disk loses nothing.

Real processes contend for a real run directory; a real, small tmpfs fills up under training.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY, make_text

from textgen import Sampler, StorageError, training
from textgen import run as rundir
from textgen.checkpoint import load_checkpoint
from textgen.files import TEMPORARY_GLOB
from textgen.training.train import train

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "3"}
CLI_TINY = [
    "--batch-size", "8", "--seq-length", "16", "--embedding-dim", "4", "--units", "8",
    "--quiet",
]  # fmt: skip


def _cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "textgen", *args],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _wait_for(condition, child: subprocess.Popen, what: str, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert child.poll() is None, f"the trainer exited ({child.returncode}) before {what}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def _one_line_error(result: subprocess.CompletedProcess) -> str:
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


def test_a_second_trainer_fails_at_once_and_a_killed_ones_lock_does_not_block(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(make_text(400))
    run = tmp_path / "run"
    first = subprocess.Popen(
        [sys.executable, "-m", "textgen", "train", str(corpus), "--checkpoint-dir", str(run),
         "--epochs", "1000", *CLI_TINY],
        env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        _wait_for(lambda: (run / rundir.CONFIG).exists(), first, "the run started")
        config = (run / rundir.CONFIG).read_bytes()
        for extra in ([], ["--resume"]):
            started = time.monotonic()
            second = _cli("train", str(corpus), "--checkpoint-dir", str(run), *CLI_TINY, *extra)
            assert time.monotonic() - started < 30  # no waiting for the lock
            line = _one_line_error(second)
            assert f"pid {first.pid}" in line and "another process" in line
        assert first.poll() is None  # the first run goes on, unharmed
        assert (run / rundir.CONFIG).read_bytes() == config
        before = load_checkpoint(run / rundir.LATEST).state.step
        _wait_for(
            lambda: (
                load_checkpoint(run / rundir.LATEST).state.step > before
                if (run / rundir.LATEST).exists()
                else False
            ),
            first,
            "a later checkpoint",
        )
    finally:
        first.kill()  # SIGKILL; TerminateProcess on Windows
        first.wait(timeout=30)
    # The kernel dropped the dead process's lock: --resume runs (briefly) and succeeds.
    resumed = _cli("train", "--checkpoint-dir", str(run), "--resume", "--max-time", "2s", "--quiet")
    assert resumed.returncode == 0, resumed.stderr
    assert "max time after" in resumed.stdout
    assert Sampler.from_checkpoint(run).generate(10, seed=0)


@contextlib.contextmanager
def _small_tmpfs(where: Path, size: str):
    where.mkdir()
    try:
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
            check=True,
            capture_output=True,
            timeout=30,
        )
    except (OSError, subprocess.SubprocessError) as err:
        pytest.skip(f"cannot mount a tmpfs here ({err})")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True, timeout=30)


def _fill(folder: Path) -> Path:
    """Write a file until the filesystem is full; returns it (delete it to free the space)."""
    filler = folder / f"filler-{uuid.uuid4().hex}"
    block = b"\0" * 65536
    with open(filler, "wb", buffering=0) as out:
        try:
            while True:
                out.write(block)
        except OSError as err:
            assert err.errno == errno.ENOSPC
        try:  # the last few bytes
            while True:
                out.write(b"\0" * 512)
        except OSError:
            pass
    return filler


class _FillAfterFirstCheckpoint(training.Callback):
    """Fills the disk once the first mid-epoch checkpoint exists."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.filler: Path | None = None

    def on_batch_end(self, state, loss):
        if self.filler is None and state.step >= 3:
            self.filler = _fill(self.folder)


def test_a_full_disk_stops_training_cleanly_and_resume_continues(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(make_text(300))
    settings = {**TINY, "epochs": 3, "checkpoint_every": 1e-6}  # a checkpoint after every batch
    quiet = dict(progress=False, echo=lambda _: None)
    train(corpus, run_dir=tmp_path / "straight", **quiet, **settings)

    with _small_tmpfs(tmp_path / "disk", "4m") as disk:
        run = disk / "run"
        filling = _FillAfterFirstCheckpoint(disk)
        with pytest.raises(StorageError) as failure:
            train(corpus, run_dir=run, callbacks=[filling], **quiet, **settings)
        message = str(failure.value)
        assert "\n" not in message and str(run) in message and "No space left" in message
        assert not list(run.glob(TEMPORARY_GLOB))  # no half-written file left behind
        saved = load_checkpoint(run / rundir.LATEST)  # the previous checkpoint still loads
        assert (
            0 < saved.state.step < load_checkpoint(tmp_path / "straight" / "latest.npz").state.step
        )
        assert Sampler.from_checkpoint(run, which="latest").generate(10, seed=0)

        # Through the command line: one line, a non-zero exit, nothing changed.
        def files() -> dict[str, bytes]:  # the lock file holds only the latest holder's pid
            return {
                p.name: p.read_bytes()
                for p in run.iterdir()
                if p.is_file() and p.name != rundir.LOCK
            }

        before = files()
        failed = _cli("train", "--checkpoint-dir", str(run), "--resume", "--quiet")
        assert "No space left" in _one_line_error(failed)
        assert files() == before

        filling.filler.unlink()
        result = train(corpus, run_dir=run, resume=True, **quiet)
        assert result.stopped == "completed" and result.epochs_done == settings["epochs"]
        final = load_checkpoint(run / rundir.LATEST)
        expected = load_checkpoint(tmp_path / "straight" / "latest.npz")
        assert final.state.step == expected.state.step
        for name, value in expected.weights.items():
            np.testing.assert_allclose(final.weights[name], value, atol=1e-5, err_msg=name)
        shutil.copytree(run, tmp_path / "kept")  # readable after the mount is gone


def test_a_disk_full_from_the_start_leaves_no_run_behind(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(make_text())
    with _small_tmpfs(tmp_path / "disk", "1m") as disk:
        _fill(disk)
        failed = _cli("train", str(corpus), "--checkpoint-dir", str(disk / "run"), *CLI_TINY)
        line = _one_line_error(failed)
        assert "cannot write" in line
        assert not (disk / "run" / rundir.CONFIG).exists()
