import numpy as np
import pytest

from textgen.corpus.reading import read_corpus
from textgen.errors import CorpusError
from textgen.windows import epoch_starts, split_ids, window_dataset


def test_read_corpus_errors(tmp_path):
    with pytest.raises(CorpusError, match="no such file"):
        read_corpus(tmp_path / "missing.txt")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CorpusError, match="no files"):
        read_corpus(tmp_path / "empty")
    (tmp_path / "blank.txt").write_text("  \n\t \n")
    with pytest.raises(CorpusError, match="empty"):
        read_corpus(tmp_path / "blank.txt")
    (tmp_path / "bin.dat").write_bytes(b"\x89PNG\x00\x00\x01binary")
    with pytest.raises(CorpusError, match="binary"):
        read_corpus(tmp_path / "bin.dat")
    (tmp_path / "latin1.txt").write_bytes(b"caf\xe9 au lait\n")
    with pytest.raises(CorpusError, match="offset 3"):
        read_corpus(tmp_path / "latin1.txt")
    assert read_corpus(tmp_path / "latin1.txt", encoding="latin-1") == "café au lait\n"
    assert "\ufffd" in read_corpus(tmp_path / "latin1.txt", errors="replace")
    (tmp_path / "one.txt").write_text("aaaaaaaaaa")
    with pytest.raises(CorpusError, match="one distinct"):
        read_corpus(tmp_path / "one.txt")


def test_folder_and_glob_read_in_sorted_order(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "b.txt").write_text("second")
    (tmp_path / "docs" / "a.txt").write_text("first")
    assert read_corpus(tmp_path / "docs") == "first\n\nsecond"
    assert read_corpus(str(tmp_path / "docs" / "*.txt")) == "first\n\nsecond"


def test_split_is_by_position_and_checks_window():
    ids = np.arange(100)
    split = split_ids(ids, 0.2, seq_length=10)
    assert list(split.valid) == list(range(80, 100))
    with pytest.raises(CorpusError, match="shorter than one window"):
        split_ids(np.arange(5), 0.0, seq_length=10)
    with pytest.raises(CorpusError, match="validation"):
        split_ids(np.arange(100), 0.05, seq_length=10)


def test_epoch_order_depends_only_on_seed_and_epoch():
    a = epoch_starts(1000, 10, seed=1, epoch=3)
    assert np.array_equal(a, epoch_starts(1000, 10, seed=1, epoch=3))
    assert not np.array_equal(a, epoch_starts(1000, 10, seed=1, epoch=4))
    assert a.max() + 11 <= 1000 and len(set(a)) == len(a)


def test_windows_are_shifted_by_one():
    ids = np.arange(50, dtype=np.uint8)
    starts = np.array([0, 7, 20])
    ((x, y),) = list(window_dataset(ids, starts, seq_length=5, batch_size=3))
    assert x.shape == (3, 5) and y.shape == (3, 5) and x.dtype == y.dtype == np.int32
    assert np.array_equal(x[1], np.arange(7, 12))
    assert np.array_equal(y[1], np.arange(8, 13))
