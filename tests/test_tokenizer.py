import numpy as np
import pytest

from textgen import Tokenizer, VocabularyError
from textgen.errors import CheckpointError


def test_round_trip_ascii_and_non_ascii(tmp_path):
    text = "Hello, wörld! Ünïcødé — 日本語 and emoji 🙂 e\u0301\n\ttab"
    tok = Tokenizer.from_text(text)
    ids = tok.encode(text)
    assert ids.dtype == np.int32
    assert tok.decode(ids) == text
    assert tok.vocab_size == len(set(text))


def test_vocabulary_is_stable_and_sorted():
    a = Tokenizer.from_text("banana split")
    b = Tokenizer.from_text("split banana")
    assert a.chars == b.chars == sorted(set("banana split"))
    assert list(a.encode("ab")) == list(b.encode("ab"))


def test_unknown_characters_are_named():
    tok = Tokenizer.from_text("abc")
    with pytest.raises(VocabularyError, match="'z'"):
        tok.encode("abz")
    assert tok.decode(tok.encode("abz", drop_unknown=True)) == "ab"


def test_save_load(tmp_path):
    tok = Tokenizer.from_text("some text ✓")
    tok.save(tmp_path / "tok.json")
    assert Tokenizer.load(tmp_path / "tok.json") == tok
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(CheckpointError):
        Tokenizer.load(tmp_path / "bad.json")


def test_max_vocab_maps_rare_characters_to_unknown():
    text = "aaaa bbb cc d 字"
    tok = Tokenizer.from_text(text, max_vocab=3)
    assert tok.unknown and tok.vocab_size == 4
    assert set(tok.chars) == {"a", "b", " "}
    ids = tok.encode("ad字")
    assert list(ids) == [tok.encode("a")[0], tok.unknown_id, tok.unknown_id]
    assert tok.decode(ids) == "a\ufffd\ufffd"
