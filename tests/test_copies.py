"""What a sample copies from its corpus (``textgen.sample.copies``), and ``sample``'s copy
options."""

import json

import numpy as np
import pytest
from click.testing import CliRunner
from test_training import _quiet

from textgen.cli.commands import main
from textgen.sample.copies import CopyIndex, CorpusUnavailable, copy_checker
from textgen.training.train import train


def longest_common_substring(text: str, corpus: str) -> int:
    """The length of the longest substring of ``text`` found in ``corpus``, by brute force."""
    best = 0
    for i in range(len(text)):
        j = i + best + 1
        while j <= len(text) and text[i:j] in corpus:
            best, j = j - i, j + 1
    return best


def test_longest_copy_matches_brute_force_on_random_texts():
    rng = np.random.default_rng(0)
    for _ in range(150):
        alphabet = int(rng.integers(2, 5))
        corpus = rng.integers(0, alphabet, int(rng.integers(1, 200)))
        text = rng.integers(0, alphabet, int(rng.integers(0, 50)))
        expected = longest_common_substring(
            "".join(map(chr, text + 97)), "".join(map(chr, corpus + 97))
        )
        assert CopyIndex.build(corpus.astype(np.uint8)).longest_copy(text) == expected
        # A vocabulary over 256: ids whose low and high bytes order them differently.
        ids = np.array([255, 256, 511, 770])
        wide = CopyIndex.build(ids[corpus].astype(np.uint16))
        assert wide.longest_copy(ids[text]) == expected
    index = CopyIndex.build(np.array([1, 2, 3, 1, 2], np.uint8))
    assert index.longest_copy(np.array([1, 2, -1, 2, 3, 1])) == 3  # -1 never matches


# A short text the model learns by heart: sampling it greedily recites it.
VERSE = "the owl and the pussy cat went to sea in a beautiful pea green boat.\n"


@pytest.fixture(scope="module")
def memorised(tmp_path_factory):
    root = tmp_path_factory.mktemp("memorised")
    corpus = root / "verse.txt"
    corpus.write_text(VERSE * 30, encoding="utf-8")
    settings = dict(epochs=40, batch_size=8, seq_length=32, units=48, embedding_dim=8)
    settings.update(dropout=0.0, validation_split=0.0, learning_rate=0.01, weight_average=0.0)
    train(corpus, run_dir=root / "run", **_quiet(**settings))
    return root / "run", corpus


def _sample(run_dir, *args):
    result = CliRunner().invoke(main, ["sample", "--checkpoint", str(run_dir), *map(str, args)])
    return result


def test_jsonl_reports_the_longest_copy_of_a_recited_sample(memorised):
    run_dir, corpus = memorised
    result = _sample(run_dir, "--temperature", 0, "--length", 150, "--format", "jsonl")
    assert result.exit_code == 0, result.output
    (row,) = [json.loads(line) for line in result.stdout.splitlines()]
    expected = longest_common_substring(row["text"], corpus.read_text())
    assert row["longest_copy"] == expected and expected > 60  # it recites
    assert any((run_dir.parent / ".cache").glob("*.sa"))
    shown = _sample(run_dir, "--temperature", 0, "--length", 150, "--show-copy")
    assert f"sample 1: longest copy of the corpus {expected} characters" in shown.stderr


def test_max_copy_draws_again_until_samples_copy_less(memorised):
    run_dir, corpus = memorised
    args = ("--temperature", 1.5, "--length", 60, "--num-samples", 4, "--seed", 7)
    free = _sample(run_dir, *args, "--format", "jsonl")
    copies = [json.loads(line)["longest_copy"] for line in free.stdout.splitlines()]
    limit = sorted(copies)[1]  # at least two of the four exceed it or equal it
    limited = _sample(run_dir, *args, "--format", "jsonl", "--max-copy", limit)
    assert limited.exit_code == 0, limited.output
    rows = [json.loads(line) for line in limited.stdout.splitlines()]
    assert len(rows) == 4
    for row in rows:
        assert row["longest_copy"] == longest_common_substring(row["text"], corpus.read_text())
        assert row["longest_copy"] <= limit
    again = _sample(run_dir, *args, "--format", "jsonl", "--max-copy", limit)
    assert again.stdout == limited.stdout  # reproducible with --seed
    greedy = _sample(run_dir, "--temperature", 0, "--length", 100, "--max-copy", 10)
    assert greedy.exit_code == 1 and "still copied" in greedy.stderr  # greedy never changes


def test_a_missing_or_changed_corpus_gives_null_and_one_warning(tmp_path):
    corpus = tmp_path / "text.txt"
    corpus.write_text(VERSE * 5, encoding="utf-8")
    settings = dict(epochs=1, batch_size=4, seq_length=16, units=8, embedding_dim=4)
    train(corpus, run_dir=tmp_path / "run", **_quiet(**settings))
    corpus.write_text(VERSE * 4 + "the boat sank.\n", encoding="utf-8")
    result = _sample(tmp_path / "run", "--length", 20, "--format", "jsonl", "--seed", 1)
    assert result.exit_code == 0
    assert json.loads(result.stdout)["longest_copy"] is None
    warnings = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(warnings) == 1 and "has changed" in warnings[0]
    corpus.unlink()
    with pytest.raises(CorpusUnavailable, match="can no longer be found"):
        copy_checker(tmp_path / "run")
    refused = _sample(tmp_path / "run", "--length", 20, "--max-copy", 5)
    assert refused.exit_code == 1 and "can no longer be found" in refused.stderr
