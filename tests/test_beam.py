"""Beam search and best-of: greedy at width 1, the exact answer where it can be brute-forced."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from textgen import Sampler, TextgenError, Tokenizer
from textgen.sample.draw import log_softmax

TOKENIZER = Tokenizer.from_text("abcde")
V = TOKENIZER.vocab_size


def _sampler(seed: int = 15, scale: float = 1.5, units: int = 6, emb: int = 3) -> Sampler:
    """A 1-layer LSTM with large random weights: peaked, history-dependent distributions, where
    the greedy choice is not the most likely text (seed 15: beam 2 beats it, beam 3 beats that)."""
    rng = np.random.default_rng(seed)

    def normal(*shape):
        return rng.normal(0, scale, shape).astype(np.float32)

    weights = {
        "embedding": normal(V, emb),
        "rnn_0/kernel": normal(emb, 4 * units),
        "rnn_0/recurrent_kernel": normal(units, 4 * units),
        "rnn_0/bias": normal(4 * units),
        "dense/kernel": normal(units, V),
        "dense/bias": normal(V),
    }
    return Sampler(weights, TOKENIZER, cell="lstm")


def _replayed_score(sampler: Sampler, prime: str, text: str) -> float:
    """The mean log-probability of ``text`` after ``prime``, stepping one character at a time."""
    sampler.reset()
    for char_id in sampler.prime_ids(prime):
        logits = sampler.step(int(char_id))
    total = 0.0
    for char_id in TOKENIZER.encode(text).tolist():
        total += float(log_softmax(logits[None])[0, char_id])
        logits = sampler.step(char_id)
    return total / len(text)


def _brute_force(sampler: Sampler, prime: str, length: int) -> tuple[str, float]:
    """The most likely text of ``length`` characters, trying every one."""
    texts = np.array(list(itertools.product(range(V), repeat=length)))
    rows = np.arange(len(texts))
    sampler.reset(len(texts))
    for char_id in sampler.prime_ids(prime):
        logits = sampler.step_batch(np.full(len(texts), char_id))
    totals = np.zeros(len(texts))
    for t in range(length):
        totals += log_softmax(logits)[rows, texts[:, t]]
        logits = sampler.step_batch(texts[:, t])
    best = int(np.argmax(totals))
    return TOKENIZER.decode(texts[best]), float(totals[best] / length)


@pytest.mark.parametrize("stop", [(), ("d",), ("ba", "e")])
def test_width_one_is_greedy(stop):
    for seed in (1, 15, 28):
        sampler = _sampler(seed)
        greedy = sampler.generate(30, temperature=0, prime="a", stop=stop)
        beam = sampler.beam_search("a", 30, 1, stop=stop)
        assert beam.text == greedy
        (scored,) = sampler.scored_batch(1, 30, temperature=0, prime="a", stop=stop)
        assert scored.text == greedy and beam.score == pytest.approx(scored.score, abs=1e-6)


def test_width_one_is_greedy_on_a_trained_run(trained_run):
    sampler = Sampler.from_checkpoint(trained_run)
    greedy = sampler.generate(80, temperature=0, prime="The ")
    assert sampler.beam_search("The ", 80, 1).text == greedy
    assert sampler.beam_search("The ", 80, 1, stop=" ").text == greedy.split(" ")[0]


def test_a_wider_beam_finds_likelier_text_and_the_exact_best_when_wide_enough():
    sampler = _sampler(15)
    length = 4
    greedy = sampler.beam_search("a", length, 1)
    narrow, wider = sampler.beam_search("a", length, 2), sampler.beam_search("a", length, 3)
    exact_text, exact_score = _brute_force(sampler, "a", length)
    assert greedy.score < narrow.score < wider.score <= exact_score + 1e-6
    # Keeping every prefix (V ** (length - 1) of them) is exhaustive: the exact answer.
    full = sampler.beam_search("a", length, V ** (length - 1))
    assert full.text == exact_text and full.score == pytest.approx(exact_score, abs=1e-6)
    # The score is the text's own mean log-probability.
    for beam in (greedy, narrow, wider, full):
        assert beam.score == pytest.approx(_replayed_score(sampler, "a", beam.text), abs=1e-6)
    for seed in range(10):  # never worse than greedy on these models, never past the best
        sampler = _sampler(seed)
        exact = _brute_force(sampler, "b", 3)[1]
        scores = [sampler.beam_search("b", 3, k).score for k in (1, 2, 4)]
        # (Equal texts may differ in the last float32 digits between batch sizes.)
        assert scores[0] <= scores[1] + 1e-6 and scores[0] <= scores[2] + 1e-6
        assert max(scores) <= exact + 1e-6


def test_stop_strings_end_a_beam():
    sampler = _sampler(15)
    beam = sampler.beam_search("a", 12, 3, stop=["c"])
    assert "c" not in beam.text
    assert "c" in sampler.beam_search("a", 12, 3).text
    # The beam that stopped scored its stop string: its score is that of the text with "c".
    produced = beam.text + "c" if len(beam.text) < 12 else beam.text
    assert beam.score == pytest.approx(_replayed_score(sampler, "a", produced), abs=1e-6)
    # A stop string the text makes at once: nothing is returned, and the stop was scored.
    always = sampler.beam_search("a", 12, 2, stop=list("abcde"))
    assert always.text == "" and always.score < 0
    assert sampler.beam_search("a", 0, 3) == ("", 0.0)


def test_beam_search_checks_its_arguments(trained_run):
    sampler = _sampler()
    for width in (0, -1, 1.5, True):
        with pytest.raises(TextgenError, match="beam width"):
            sampler.beam_search("a", 5, width)
    with pytest.raises(TextgenError, match="length"):
        sampler.beam_search("a", -1, 2)
    with pytest.raises(TextgenError, match="stop string"):
        sampler.beam_search("a", 5, 2, stop=[""])
    with pytest.raises(TextgenError, match="'z'"):
        sampler.beam_search("az", 5, 2)
    assert len(sampler.beam_search("az", 5, 2, drop_unknown=True).text) == 5
    keras_engine = Sampler.from_checkpoint(trained_run, engine="keras")
    with pytest.raises(TextgenError, match="numpy engine"):
        keras_engine.beam_search("a", 5, 2)


def test_best_of_is_the_best_scoring_of_the_seeded_samples():
    sampler = _sampler(15)
    options = dict(temperature=1.3, prime="ab", seed=42)
    samples = sampler.generate_batch(6, 25, **options)
    scores = [_replayed_score(sampler, "ab", text) for text in samples]
    scored = sampler.scored_batch(6, 25, **options)
    assert [s.text for s in scored] == samples
    np.testing.assert_allclose([s.score for s in scored], scores, atol=1e-6)
    best = samples[int(np.argmax(scores))]
    assert sampler.generate(25, best_of=6, **options) == best
    assert sampler.generate(25, best_of=6, **options) == best  # reproducible
    ranked = [samples[i] for i in np.argsort(scores)[::-1]]
    assert sampler.generate_batch(3, 25, best_of=6, **options) == ranked[:3]
    # best_of=1 is the plain sample.
    assert sampler.generate(25, best_of=1, **options) == samples[0]
    with pytest.raises(TextgenError, match="best_of"):
        sampler.generate_batch(3, 25, best_of=2, **options)


def test_best_of_with_stop_strings_scores_what_the_samples_produced():
    sampler = _sampler(15)
    options = dict(temperature=1.5, prime="a", seed=3, stop=("ea",))
    samples = sampler.generate_batch(8, 40, **options)
    scored = sampler.scored_batch(8, 40, **options)
    assert [s.text for s in scored] == samples
    stopped = [len(text) < 40 for text in samples]
    assert any(stopped) and not all(stopped)
    for text, (_, score), ended in zip(samples, scored, stopped):
        # A sample that stopped is scored with its stop string's characters.
        produced = text + "ea" if ended else text
        assert score == pytest.approx(_replayed_score(sampler, "a", produced), abs=1e-6)
