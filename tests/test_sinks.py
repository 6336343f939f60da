"""Writing to user-named paths: real files, links, devices, FIFOs, directories and stdout."""

import os
import stat
import threading
from pathlib import Path

import pytest

from textgen.errors import OutputError
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
    with pytest.raises(OutputError, match="cannot write /dev/full: No space left on device"):
        write_path("/dev/full", writer(b"x" * 100_000))
    assert kind("/dev/full") == "S_ISCHR"
    link = tmp_path / "full"
    link.symlink_to("/dev/full")
    with pytest.raises(OutputError, match="No space"):
        write_path(link, writer(b"x"))
    assert kind(link) == "S_ISLNK" and kind("/dev/full") == "S_ISCHR"


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
    with pytest.raises(OutputError, match="is a directory"):
        write_path(tmp_path, writer(b"x"))
    link = tmp_path / "dir-link"
    link.symlink_to(tmp_path)
    with pytest.raises(OutputError, match="is a directory"):
        write_path(link, writer(b"x"))
    assert kind(tmp_path) == "S_ISDIR" and kind(link) == "S_ISLNK"
    with pytest.raises(OutputError, match="No such file or directory"):
        write_path(tmp_path / "missing" / "out.txt", writer(b"x"))
