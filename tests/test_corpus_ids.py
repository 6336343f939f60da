import numpy as np
import pytest

from textgen import Sampler, build_model
from textgen.corpus import reading as data_module
from textgen.corpus.ids import prepare_corpus
from textgen.errors import CorpusError, VocabularyError
from textgen.tokenizer import Tokenizer


def test_streamed_ids_equal_in_memory_encoding(tmp_path, monkeypatch):
    monkeypatch.setattr(data_module, "CHUNK_BYTES", 7)  # split multi-byte characters
    text = "Grüße, 世界! e\u0301 🙂🙂 naïve café\n" * 20
    (tmp_path / "a.txt").write_text(text, encoding="utf-8")
    prepared = prepare_corpus(tmp_path / "a.txt", cache_dir=tmp_path / "cache")
    assert prepared.tokenizer == Tokenizer.from_text(text)
    assert prepared.tokenizer.decode(prepared.ids) == text
    assert prepared.ids.dtype == np.uint8  # a small vocabulary takes one byte per character


def test_cache_is_reused_and_keyed_by_content(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("hello world\n" * 50)
    first = prepare_corpus(path, cache_dir=tmp_path / "cache")
    ids_file = tmp_path / "cache" / f"{first.sha256}.ids"
    stamp = ids_file.stat().st_mtime_ns
    second = prepare_corpus(path, cache_dir=tmp_path / "cache")
    assert isinstance(second.ids, np.memmap)
    assert ids_file.stat().st_mtime_ns == stamp and second.sha256 == first.sha256
    path.write_text("hello there\n" * 50)
    third = prepare_corpus(path, cache_dir=tmp_path / "cache")
    assert third.sha256 != first.sha256
    assert third.tokenizer.decode(third.ids) == "hello there\n" * 50


def test_invalid_utf8_names_the_byte_offset_across_chunks(tmp_path, monkeypatch):
    monkeypatch.setattr(data_module, "CHUNK_BYTES", 5)
    path = tmp_path / "bad.txt"
    path.write_bytes("ab€cdefgh".encode() + b"\xff" + b"tail")
    with pytest.raises(CorpusError, match="offset 11"):
        prepare_corpus(path)
    replaced = prepare_corpus(path, errors="replace")
    assert "\ufffd" in replaced.tokenizer.chars


def test_other_encodings(tmp_path):
    path = tmp_path / "latin.txt"
    path.write_bytes("façade déjà vu\n".encode("latin-1") * 5)
    prepared = prepare_corpus(path, encoding="latin-1")
    assert "ç" in prepared.tokenizer.chars
    with pytest.raises(CorpusError, match="unknown encoding"):
        prepare_corpus(path, encoding="klingon-8")


def test_large_alphabet_with_max_vocab_trains_and_samples(tmp_path):
    rng = np.random.default_rng(0)
    common = [chr(c) for c in range(0x4E00, 0x4E00 + 40)]
    rare = [chr(c) for c in range(0x5E00, 0x5E00 + 3000)]
    chars = rng.choice(common, size=6000).tolist() + rng.choice(rare, size=3000).tolist()
    rng.shuffle(chars)
    text = "".join(chars) + "🙂\u0301"
    path = tmp_path / "zh.txt"
    path.write_text(text, encoding="utf-8")
    prepared = prepare_corpus(path, cache_dir=tmp_path / "cache", max_vocab=300)
    tok = prepared.tokenizer
    assert tok.vocab_size == 301 and tok.unknown
    assert prepared.ids.dtype == np.uint16
    assert set(common) <= set(tok.chars)
    assert int(prepared.ids.max()) == tok.unknown_id
    model = build_model(tok.vocab_size, embedding_dim=4, units=6)
    sampler = Sampler(model, tok)
    out = sampler.generate(500, temperature=3.0, seed=0)
    assert len(out) == 500 and "\ufffd" not in out  # the unknown id is never drawn


def test_resume_vocabulary_must_cover_the_corpus(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("abc abc\n" * 10)
    tok = Tokenizer.from_text("abc \n")
    assert tok.decode(prepare_corpus(path, tokenizer=tok, cache_dir=tmp_path / "c").ids)
    path.write_text("abcd abc\n" * 10)
    with pytest.raises(VocabularyError, match="'d'"):
        prepare_corpus(path, tokenizer=tok, cache_dir=tmp_path / "c")


def test_fast_decoding_agrees_with_python_on_random_bytes(tmp_path, monkeypatch):
    monkeypatch.setattr(data_module, "CHUNK_BYTES", 13)
    rng = np.random.default_rng(42)
    pieces = [b"a", b"Z ", b"\n", "é".encode(), "€".encode(), "🙂".encode(), b"\xff", b"\xc3",
              b"\xe2\x82", b"\xed\xa0\x80", b"\xc0\xaf", b"\xf4\x90\x80\x80", b"\x80"]  # fmt: skip
    path = tmp_path / "r.txt"
    for trial in range(150):
        picks = rng.choice(len(pieces), size=int(rng.integers(2, 60)), p=None)
        raw = b"ab" + b"".join(pieces[i] for i in picks)
        path.write_bytes(raw)
        try:
            expected = raw.decode("utf-8")
        except UnicodeDecodeError as err:
            with pytest.raises(CorpusError, match=f"offset {err.start};"):
                prepare_corpus(path, cache_dir=tmp_path / f"c{trial}")
            continue
        if len(set(expected)) < 2:
            continue
        prepared = prepare_corpus(path, cache_dir=tmp_path / f"c{trial}")
        assert prepared.tokenizer.decode(prepared.ids) == expected
