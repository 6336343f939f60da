"""Drawing the next character: temperature, top-k, top-p, exclusions and block-drawn noise."""

from __future__ import annotations

import numpy as np
import pytest

from textgen.errors import TextgenError
from textgen.sample.draw import LogExponentials, sample_ids
from textgen.sample.options import SamplingOptions

VOCAB = 7


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max())
    return e / e.sum()


def frequencies(logits_row: np.ndarray, n: int, **kwargs: object) -> np.ndarray:
    logits = np.repeat(logits_row[None, :].astype(np.float32), n, axis=0)
    drawn = sample_ids(logits, np.random.default_rng(5), **kwargs)
    return np.bincount(drawn, minlength=logits_row.size) / n


ROW = np.array([2.0, 1.0, 0.5, 0.0, -1.0, -3.0], np.float32)


def test_temperature_zero_is_argmax() -> None:
    logits = np.random.default_rng(2).standard_normal((9, VOCAB)).astype(np.float32)
    np.testing.assert_array_equal(
        sample_ids(logits, np.random.default_rng(0), temperature=0), logits.argmax(axis=1)
    )
    np.testing.assert_array_equal(
        sample_ids(logits, np.random.default_rng(0), top_k=1), logits.argmax(axis=1)
    )


@pytest.mark.parametrize("temperature", [1.0, 0.5, 2.0])
def test_frequencies_follow_softmax(temperature: float) -> None:
    got = frequencies(ROW, 200_000, temperature=temperature)
    np.testing.assert_allclose(got, softmax(ROW / temperature), atol=0.005)


def test_top_k_and_top_p_restrict_support() -> None:
    got = frequencies(ROW, 100_000, top_k=3)
    probs = softmax(ROW[:3])
    np.testing.assert_allclose(got[:3], probs, atol=0.006)
    assert not got[3:].any()
    # Cumulative softmax(ROW) is 0.56, 0.77, 0.89, 0.97, ...: the nucleus is the shortest prefix
    # whose mass reaches top_p.
    for top_p, kept in [(0.5, 1), (0.7, 2), (0.8, 3), (0.95, 4)]:
        assert np.count_nonzero(frequencies(ROW, 20_000, top_p=top_p)) == kept
    assert np.count_nonzero(frequencies(ROW, 20_000, top_k=3, top_p=0.95)) == 3


def test_excluded_ids_are_never_drawn() -> None:
    assert not frequencies(ROW, 20_000, exclude=[0, 2])[[0, 2]].any()
    assert not frequencies(ROW, 20_000, exclude=[0], top_k=2)[[0, 3, 4, 5]].any()
    logits = np.repeat(ROW[None], 3, axis=0)
    np.testing.assert_array_equal(
        sample_ids(logits, np.random.default_rng(0), temperature=0, exclude=[0]), [1, 1, 1]
    )


def test_per_row_generators_make_streams_independent_of_batch() -> None:
    logits = np.random.default_rng(3).standard_normal((4, VOCAB)).astype(np.float32)
    before = logits.copy()
    together = sample_ids(logits, [np.random.default_rng(s) for s in range(4)])
    alone = [sample_ids(logits[s : s + 1], [np.random.default_rng(s)])[0] for s in range(4)]
    np.testing.assert_array_equal(together, alone)
    np.testing.assert_array_equal(logits, before)


@pytest.mark.parametrize("per_row", [False, True])
def test_block_drawn_noise_gives_the_ids_of_step_by_step_draws(per_row: bool) -> None:
    steps = np.random.default_rng(4).standard_normal((7, 3, VOCAB)).astype(np.float32)

    def generators():
        gens = [np.random.default_rng([9, s]) for s in range(3)]
        return gens if per_row else gens[0]

    one_by_one, gens = [], generators()
    for logits in steps:
        one_by_one.append(sample_ids(logits, gens, temperature=0.7, top_k=20))
    blocked = LogExponentials(generators(), 3, VOCAB, block=3)  # refills mid-sequence
    drawn = [sample_ids(logits, blocked, temperature=0.7, top_k=20) for logits in steps]
    np.testing.assert_array_equal(drawn, one_by_one)
    with pytest.raises(ValueError, match="drawn for shape"):
        blocked.next(2, VOCAB)


def test_sampling_options_reject_bad_values_in_one_place() -> None:
    for temperature in (-1, float("nan"), float("inf"), "hot"):
        with pytest.raises(TextgenError, match="temperature"):
            SamplingOptions(temperature=temperature)
    with pytest.raises(TextgenError, match="top-k"):
        SamplingOptions(top_k=0)
    with pytest.raises(TextgenError, match="top-p"):
        SamplingOptions(top_p=0)
    with pytest.raises(TextgenError, match="stop string"):
        SamplingOptions(stop=["\n", ""])
    assert SamplingOptions(stop="\n\n").stop == ("\n\n",)
    logits = np.zeros((2, VOCAB), np.float32)
    with pytest.raises(ValueError, match="one Generator per row"):
        sample_ids(logits, [np.random.default_rng(0)])
