"""Fine-tuning: a new run from a trained one, with a merged vocabulary
(``textgen.training.finetune``)."""

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import TINY, make_text
from test_training import _CtrlCAt, _quiet

from textgen.checkpoint import load_checkpoint
from textgen.cli.commands import main
from textgen.errors import CheckpointError, OptionsError
from textgen.run import open_run
from textgen.sample.sampler import Sampler
from textgen.tokenizer import Tokenizer
from textgen.training.finetune import open_source, transfer_weights
from textgen.training.train import TrainingInterrupted, train

NEW_TEXT = "Zebra #42 sang über the café!\n"


@pytest.fixture(scope="module")
def source_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("source")
    (root / "a.txt").write_text(make_text(120), encoding="utf-8")
    train(root / "a.txt", run_dir=root / "a", **_quiet(**TINY))
    return root / "a"


@pytest.fixture
def new_corpus(tmp_path):
    path = tmp_path / "b.txt"
    path.write_text(make_text(80, seed=3) + NEW_TEXT * 40, encoding="utf-8")
    return path


def test_extended_vocabulary_keeps_ids_and_appends_new_characters():
    base = Tokenizer(list("cab "))
    counts = np.bincount([ord(c) for c in "a cab zé!zz"], minlength=256)
    merged = base.extended(counts)
    assert merged.chars == [" ", "a", "b", "c", "!", "z", "é"]
    assert merged.encode("cab")[:3].tolist() == base.encode("cab").tolist()
    assert merged.decode(merged.encode("zé! cab")) == "zé! cab"
    assert Tokenizer.from_json(json.loads(json.dumps(merged.to_json()))) == merged
    capped = base.extended(counts, max_vocab=5)  # room for one new character: the most frequent
    assert capped.chars == [" ", "a", "b", "c", "z"] and capped.unknown
    assert capped.encode("é!").tolist() == [capped.unknown_id] * 2


def test_transferred_weights_copy_known_rows_and_start_new_ones_at_their_frequency(
    source_run, new_corpus
):
    source = open_source(source_run)
    old = source.run.tokenizer
    counts = np.bincount([ord(c) for c in new_corpus.read_text()], minlength=256)
    merged = old.extended(counts)
    ids = merged.encode(new_corpus.read_text())
    weights = transfer_weights(source, merged, ids)
    n = len(old.chars)
    np.testing.assert_array_equal(weights["embedding"][:n], source.run.weights["embedding"])
    np.testing.assert_array_equal(
        weights["dense/kernel"][:, :n], source.run.weights["dense/kernel"]
    )
    np.testing.assert_array_equal(weights["dense/bias"][:n], source.run.weights["dense/bias"])
    np.testing.assert_array_equal(weights["rnn_0/kernel"], source.run.weights["rnn_0/kernel"])
    assert not weights["dense/kernel"][:, n:].any()
    # Over the new text, the model gives each new character about its frequency.
    sampler = Sampler(weights, merged, cell="lstm")
    sampler.reset(1)
    probs = []
    for char_id in ids[:600]:
        logits = sampler.step_batch(np.array([char_id]))[0].astype(np.float64)
        probs.append(np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum())
    mean = np.mean(probs, axis=0)
    frequency = np.bincount(ids, minlength=merged.vocab_size) / len(ids)
    for char_id in range(n, merged.vocab_size):
        assert frequency[char_id] / 3 < mean[char_id] < frequency[char_id] * 3


def test_fine_tuned_run_records_its_source_and_keeps_the_source_ids(
    tmp_path, source_run, new_corpus
):
    result = train(
        new_corpus, run_dir=tmp_path / "b", init_from=source_run, **_quiet(epochs=1, seq_length=16)
    )
    assert result.best_val_loss is not None
    run, source = open_run(tmp_path / "b"), open_run(source_run)
    assert run.tokenizer.chars[: len(source.tokenizer.chars)] == source.tokenizer.chars
    assert set("Z#42üé!") <= set(run.tokenizer.chars)
    assert run.config.model.units == source.config.model.units == TINY["units"]
    assert run.config.training.learning_rate == 4e-3  # the usual default, measured best
    record = run.config.init_from
    assert record["source"] == str(source_run)
    assert record["corpus_sha256"] == source.config.corpus["sha256"]
    info = CliRunner().invoke(main, ["info", str(tmp_path / "b")])
    assert info.exit_code == 0 and f"started from: {source_run}" in info.output


def test_resuming_a_fine_tuned_run_is_exact(tmp_path, source_run, new_corpus):
    settings = dict(epochs=2, seq_length=16, init_from=source_run)
    train(new_corpus, run_dir=tmp_path / "straight", **_quiet(**settings))
    total = load_checkpoint(tmp_path / "straight" / "latest.npz").state.step
    with pytest.raises(TrainingInterrupted):
        train(new_corpus, run_dir=tmp_path / "split", callbacks=[_CtrlCAt(total // 2)],
              **_quiet(**settings))  # fmt: skip
    train(new_corpus, run_dir=tmp_path / "split", resume=True, **_quiet())
    straight = load_checkpoint(tmp_path / "straight" / "latest.npz")
    split = load_checkpoint(tmp_path / "split" / "latest.npz")
    for name, value in straight.weights.items():
        np.testing.assert_allclose(split.weights[name], value, rtol=1e-6, atol=1e-6)


def test_max_vocab_caps_the_merged_vocabulary(tmp_path, source_run, new_corpus):
    known = len(open_run(source_run).tokenizer.chars)
    train(new_corpus, run_dir=tmp_path / "b", init_from=source_run,
          **_quiet(epochs=1, seq_length=16, max_vocab=known + 2))  # fmt: skip
    tokenizer = open_run(tmp_path / "b").tokenizer
    assert len(tokenizer.chars) == known + 2 and tokenizer.unknown


def test_bad_sources_and_options_are_refused(tmp_path, source_run, new_corpus):
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="cannot start from"):
        train(new_corpus, run_dir=tmp_path / "x", init_from=tmp_path / "empty", **_quiet())
    incomplete = tmp_path / "incomplete"
    incomplete.mkdir()
    (incomplete / "config.json").write_text((source_run / "config.json").read_text())
    (incomplete / "tokenizer.json").write_text((source_run / "tokenizer.json").read_text())
    with pytest.raises(CheckpointError, match="no checkpoint"):
        train(new_corpus, run_dir=tmp_path / "x", init_from=incomplete, **_quiet())
    with pytest.raises(OptionsError, match="--units 16"):
        train(new_corpus, run_dir=tmp_path / "x", init_from=source_run, **_quiet(units=16))
    with pytest.raises(OptionsError, match="--cell gru"):
        train(new_corpus, run_dir=tmp_path / "x", init_from=source_run, **_quiet(cell="gru"))
    with pytest.raises(OptionsError, match="--resume"):
        train(new_corpus, run_dir=source_run, resume=True, init_from=source_run, **_quiet())
    assert not (tmp_path / "x").exists()


def test_a_gru_source_refuses_lstm_on_the_command_line(tmp_path, corpus, new_corpus):
    train(corpus, run_dir=tmp_path / "gru", **_quiet(**{**TINY, "epochs": 1, "cell": "gru"}))
    result = CliRunner().invoke(
        main,
        [
            "train",
            str(new_corpus),
            "--init-from",
            str(tmp_path / "gru"),
            "--cell",
            "lstm",
            "--checkpoint-dir",
            str(tmp_path / "b"),
            "--quiet",
        ],  # fmt: skip
    )
    assert result.exit_code == 2, result.output
    assert "--cell lstm disagrees with" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "b").exists()


def test_a_source_being_trained_is_refused(tmp_path, source_run, new_corpus):
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import sys, time
            from textgen.run import writer_lock
            with writer_lock({str(source_run)!r}):
                print("held", flush=True)
                time.sleep(60)
        """)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(CheckpointError, match="being trained right now"):
            train(new_corpus, run_dir=tmp_path / "b", init_from=source_run, **_quiet())
    finally:
        holder.kill()
        holder.wait()
