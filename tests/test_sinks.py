"""Writing to user-named paths: real files, links, devices, FIFOs, directories and stdout."""

import os
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from click.testing import CliRunner

from textgen.cli.commands import main
from textgen.errors import StorageError
from textgen.sinks import write_path


def writer(data: bytes):
    return lambda f: f.write(data)


class FifoReader(threading.Thread):
    """Reads a FIFO to its end (or ``limit`` bytes, then closes it) in the background."""

    def __init__(self, path: Path, limit: int | None = None) -> None:
        super().__init__(daemon=True)
        self.path, self.limit, self.data = path, limit, b""

    def run(self) -> None:
        with open(self.path, "rb") as fifo:
            self.data = fifo.read() if self.limit is None else fifo.read(self.limit)


@pytest.fixture
def fifo(tmp_path):
    path = tmp_path / "fifo"
    os.mkfifo(path)
    return path


def kind(path) -> str:
    mode = os.lstat(path).st_mode
    for name in ("S_ISLNK", "S_ISCHR", "S_ISFIFO", "S_ISDIR", "S_ISREG"):
        if getattr(stat, name)(mode):
            return name
    return "other"


def test_a_regular_file_is_replaced_atomically_and_a_new_one_created(tmp_path):
    new = tmp_path / "new.txt"
    write_path(new, writer(b"one"))
    assert new.read_bytes() == b"one"
    before = os.stat(new).st_ino
    write_path(new, writer(b"two"))
    assert new.read_bytes() == b"two"
    assert os.stat(new).st_ino != before  # renamed into place, not rewritten in place
    assert sorted(p.name for p in tmp_path.iterdir()) == ["new.txt"]  # no temporaries left


def test_a_symlink_stays_and_its_target_is_replaced(tmp_path):
    target = tmp_path / "target.txt"
    target.write_text("old")
    link = tmp_path / "link.txt"
    link.symlink_to(target)
    write_path(link, writer(b"new"))
    assert kind(link) == "S_ISLNK" and kind(target) == "S_ISREG"
    assert target.read_bytes() == b"new"

    dangling = tmp_path / "dangling"
    dangling.symlink_to(tmp_path / "made.txt")
    write_path(dangling, writer(b"made"))
    assert kind(dangling) == "S_ISLNK" and (tmp_path / "made.txt").read_bytes() == b"made"


def test_devices_are_written_through_and_stay_devices(tmp_path):
    write_path("/dev/null", writer(b"gone"))
    assert kind("/dev/null") == "S_ISCHR"
    with pytest.raises(StorageError, match="cannot write /dev/full: No space left on device"):
        write_path("/dev/full", writer(b"x" * 100_000))
    assert kind("/dev/full") == "S_ISCHR"
    link = tmp_path / "full"
    link.symlink_to("/dev/full")
    with pytest.raises(StorageError, match="No space"):
        write_path(link, writer(b"x"))
    assert kind(link) == "S_ISLNK" and kind("/dev/full") == "S_ISCHR"


def test_a_file_held_open_through_proc_is_appended_to_not_replaced(tmp_path):
    """`--output /dev/stdout >> log`: the log keeps what it had."""
    log = tmp_path / "log.txt"
    log.write_bytes(b"earlier\n")
    inode = os.stat(log).st_ino
    with open(log, "ab") as held:
        write_path(f"/dev/fd/{held.fileno()}", writer(b"later\n"))
    assert log.read_bytes() == b"earlier\nlater\n" and os.stat(log).st_ino == inode


def test_a_fifo_is_written_through_and_stays_a_fifo(fifo):
    reader = FifoReader(fifo)
    reader.start()
    write_path(fifo, writer(b"through the pipe"))
    reader.join(10)
    assert reader.data == b"through the pipe" and kind(fifo) == "S_ISFIFO"


def test_a_fifo_whose_reader_leaves_is_a_broken_pipe(fifo):
    reader = FifoReader(fifo, limit=10)
    reader.start()

    def write(f):
        for _ in range(1000):  # far more than a pipe holds, so the writer sees the reader go
            f.write(b"x" * 4096)
            f.flush()

    with pytest.raises(BrokenPipeError):
        write_path(fifo, write)
    reader.join(10)
    assert reader.data == b"x" * 10 and kind(fifo) == "S_ISFIFO"


def test_a_directory_is_an_error_and_stays_a_directory(tmp_path):
    with pytest.raises(StorageError, match="is a directory"):
        write_path(tmp_path, writer(b"x"))
    link = tmp_path / "dir-link"
    link.symlink_to(tmp_path)
    with pytest.raises(StorageError, match="is a directory"):
        write_path(link, writer(b"x"))
    assert kind(tmp_path) == "S_ISDIR" and kind(link) == "S_ISLNK"
    with pytest.raises(StorageError, match="No such file or directory"):
        write_path(tmp_path / "missing" / "out.txt", writer(b"x"))


# -- through the command line -------------------------------------------------------------------


def sample(run_dir, *args):
    args = ["sample", "--checkpoint", run_dir, "--length", 30, "--seed", 4, *args]
    return CliRunner().invoke(main, [str(a) for a in args])


def test_sample_output_to_special_files(tmp_path, trained_run, fifo):
    expected = sample(trained_run, "--num-samples", 3).output
    assert expected.count("----- sample") == 3

    full = sample(trained_run, "--num-samples", 3, "--output", "/dev/full")
    assert full.exit_code == 1 and kind("/dev/full") == "S_ISCHR"
    assert full.output.strip() == "Error: cannot write /dev/full: No space left on device"

    null = sample(trained_run, "--num-samples", 3, "--output", "/dev/null")
    assert null.exit_code == 0 and null.output == "" and kind("/dev/null") == "S_ISCHR"

    reader = FifoReader(fifo)
    reader.start()
    piped = sample(trained_run, "--num-samples", 3, "--output", fifo)
    reader.join(10)
    assert piped.exit_code == 0 and kind(fifo) == "S_ISFIFO"
    assert reader.data.decode() == expected

    target = tmp_path / "target.txt"
    target.write_text("old")
    link = tmp_path / "link.txt"
    link.symlink_to(target)
    linked = sample(trained_run, "--num-samples", 3, "--output", link)
    assert linked.exit_code == 0 and kind(link) == "S_ISLNK"
    assert target.read_text() == expected

    folder = sample(trained_run, "--output", tmp_path)
    assert folder.exit_code == 2 and "is a directory" in folder.output
    assert kind(tmp_path) == "S_ISDIR"

    dash = sample(trained_run, "--num-samples", 3, "--output", "-")
    assert dash.exit_code == 0 and dash.output == expected


def textgen(run_dir, *args):
    command = [sys.executable, "-m", "textgen", "sample", "--checkpoint", str(run_dir)]
    return [*command, "--seed", "4", *map(str, args)]


def test_a_full_stdout_is_a_one_line_error(trained_run):
    """Real stdout: what Python still buffers at exit must not fail again (exit status 120)."""
    for args in (["--length", 30], ["--length", 30, "--num-samples", 3]):
        with open("/dev/full", "wb") as full:
            done = subprocess.run(
                textgen(trained_run, *args), stdout=full, stderr=subprocess.PIPE, timeout=60
            )
        errors = done.stderr.decode()
        assert done.returncode == 1, errors
        assert errors == "Error: cannot write standard output: No space left on device\n"
        assert kind("/dev/full") == "S_ISCHR"


@pytest.mark.parametrize("args", [["--length", 0], ["--length", 50, "--num-samples", 3000]])
def test_a_closed_pipe_ends_quietly(trained_run, args):
    """`textgen sample | head -c 10`: the reader leaves; no message, no traceback."""
    process = subprocess.Popen(
        textgen(trained_run, *args), stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    head = process.stdout.read(10)
    process.stdout.close()
    errors = process.stderr.read().decode()
    assert process.wait(60) == 1, errors
    assert len(head) == 10 and errors == ""
