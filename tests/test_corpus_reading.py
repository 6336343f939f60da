"""Reading a corpus's files: errors that name the problem, folders and globs in order."""

import pytest

from textgen.corpus.reading import read_corpus
from textgen.errors import CorpusError


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
