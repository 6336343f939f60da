"""textgen on a platform without ``fcntl`` (Windows): every command runs, and the run lock holds.

Each command runs in a fresh interpreter whose ``import fcntl`` raises ImportError, as it does on
Windows; ``filelock`` then locks without it, and the lock must still refuse a second trainer
with the holder's pid and free itself when its holder is killed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import make_text

from textgen import run as rundir

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "3"}
# None in sys.modules makes every later `import fcntl` raise ImportError.
NO_FCNTL = "import sys; sys.modules['fcntl'] = None; "
CLI = NO_FCNTL + "from textgen.cli.commands import main; main(prog_name='textgen')"
CLI_TINY = [
    "--batch-size", "8", "--seq-length", "16", "--embedding-dim", "4", "--units", "8",
    "--quiet",
]  # fmt: skip
# Holds a run's lock until killed; prints its pid once it holds it.
HOLDER = NO_FCNTL + (
    "import os, time; from textgen import run\n"
    "with run.writer_lock(sys.argv[1]):\n"
    "    print(os.getpid(), flush=True); time.sleep(600)\n"
)


def _textgen(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", CLI, *args], env=ENV, capture_output=True, text=True, timeout=180
    )


def _ok(done: subprocess.CompletedProcess) -> str:
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr and "Warning" not in done.stderr, done.stderr
    return done.stdout


def test_the_shim_really_hides_fcntl():
    done = subprocess.run(
        [sys.executable, "-c", NO_FCNTL + "import fcntl"], capture_output=True, text=True
    )
    assert done.returncode == 1 and "ModuleNotFoundError: import of fcntl halted" in done.stderr


def test_every_module_imports_without_posix_only_modules():
    # The modules Windows lacks; the serve, export and TensorFlow paths included.
    posix_only = ("fcntl", "termios", "pwd", "grp", "resource", "tty", "pty", "syslog")
    code = (
        f"import sys\nfor name in {posix_only!r}: sys.modules[name] = None\n"
        "import importlib, pkgutil, textgen\n"
        "names = [m.name for m in pkgutil.walk_packages(textgen.__path__, 'textgen.')\n"
        "         if not m.name.endswith('__main__')]\n"
        "for name in names: importlib.import_module(name)\n"
        "print(' '.join(names))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], env=ENV, capture_output=True, text=True, timeout=180
    )
    assert done.returncode == 0, done.stderr
    imported = done.stdout.split()
    assert {
        "textgen.run",
        "textgen.serve.app",
        "textgen.export.formats",
        "textgen.cli.commands",
    } <= set(imported)


@pytest.fixture(scope="module")
def run_without_fcntl(tmp_path_factory) -> Path:
    """A tiny run trained by `textgen train` without fcntl (read-only for the tests)."""
    root = tmp_path_factory.mktemp("no_fcntl")
    corpus = root / "corpus.txt"
    corpus.write_text(make_text(), encoding="utf-8")
    run = root / "run"
    _ok(_textgen("train", str(corpus), "--checkpoint-dir", str(run), "--epochs", "1", *CLI_TINY))
    return run


def test_train_sample_info_export_without_fcntl(run_without_fcntl, tmp_path):
    run = run_without_fcntl
    assert (run / rundir.LATEST).is_file()
    assert not (run / rundir.LOCK_HOLDER).exists()  # the holder's pid leaves with the holder
    text = _ok(_textgen("sample", "--checkpoint", str(run), "--length", "40", "--seed", "3"))
    assert len(text) == 41 and text.endswith("\n")
    assert "best validation loss" in _ok(_textgen("info", str(run))).lower()
    out = tmp_path / "model.keras"
    assert str(out) in _ok(_textgen("export", str(run), str(out)))
    assert out.stat().st_size > 1000


def test_the_lock_without_fcntl_names_its_holder_and_dies_with_it(run_without_fcntl, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(run_without_fcntl, run)
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(run)], env=ENV, stdout=subprocess.PIPE, text=True
    )
    try:
        pid = holder.stdout.readline().strip()
        assert pid == str(holder.pid)
        started = time.monotonic()
        refused = _textgen("train", "--checkpoint-dir", str(run), "--resume", *CLI_TINY)
        assert time.monotonic() - started < 60  # no waiting for the lock
        assert refused.returncode == 1
        assert refused.stderr.strip().splitlines() == [
            f"Error: {run} is being trained by another process (pid {pid}); wait for it to "
            "finish or choose another --checkpoint-dir"
        ]
    finally:
        holder.kill()  # SIGKILL; TerminateProcess on Windows
        holder.wait(timeout=30)
    resumed = _textgen(
        "train", "--checkpoint-dir", str(run), "--resume", "--epochs", "2", *CLI_TINY
    )
    _ok(resumed)
    assert len(rundir.read_history(run)) == 2
