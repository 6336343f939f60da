"""The generation core on its own: rows drawing side by side, stop strings, scores, logprobs."""

from __future__ import annotations

import numpy as np
import pytest

from textgen.sample.draw import LogExponentials, log_softmax, sample_ids
from textgen.sample.generation import Batch, Piece
from textgen.sample.options import SamplingOptions
from textgen.tokenizer import Tokenizer

TOKENIZER = Tokenizer(list("abcdefgh"))
VOCAB = TOKENIZER.vocab_size
OPTIONS = [
    SamplingOptions(temperature=1.0),
    SamplingOptions(temperature=0.7, top_k=3),
    SamplingOptions(temperature=0.0),
    SamplingOptions(temperature=1.3, top_p=0.8),
]


def _logits(steps: int, rows: int) -> np.ndarray:
    return np.random.default_rng(5).normal(0, 2, (steps, rows, VOCAB)).astype(np.float32)


@pytest.mark.parametrize("lockstep", [False, True])
@pytest.mark.parametrize("mixed", [False, True])
def test_each_row_draws_as_it_would_alone_from_its_own_generator(lockstep, mixed):
    options = OPTIONS if mixed else OPTIONS[:1] * len(OPTIONS)
    logits = _logits(100, len(options))
    batch = Batch(TOKENIZER, len(options), lockstep=lockstep)
    rows = [batch.add(o, 7, i, lambda piece: None) for i, o in enumerate(options)]
    together = np.stack([batch.draw(rows, step) for step in logits])  # (steps, rows)
    for i, alone_options in enumerate(options):
        # The rule every front door relies on: row i draws from default_rng([seed, i]).
        noise = LogExponentials(np.random.default_rng([7, i]), 1, VOCAB)
        alone = [
            sample_ids(
                step[i : i + 1], noise, temperature=alone_options.temperature,
                top_k=alone_options.top_k, top_p=alone_options.top_p,
            )[0]
            for step in logits
        ]  # fmt: skip
        assert together[:, i].tolist() == alone


def test_a_row_stops_scores_and_reports_its_logprobs():
    pieces: list[Piece] = []
    batch = Batch(TOKENIZER, 1)
    options = SamplingOptions(temperature=0.0, stop=("cd",))
    row = batch.add(options, 0, 0, pieces.append, logprobs=2, score=True)
    wanted = "abcd"  # greedy picks these, the last two being the stop string
    logits = np.zeros((len(wanted), 1, VOCAB), np.float32)
    for step, char in zip(logits, wanted):
        step[0, TOKENIZER.chars.index(char)] = 3.0
    for step in logits:
        batch.next_ids([row], step)
    assert row.done and "".join(p.text for p in pieces) == "ab"
    assert pieces[-1].finish_reason == "stop"
    chosen = float(log_softmax(logits[0])[0, 0])  # every pick has the same log-probability
    assert pieces[-1].score == pytest.approx(chosen)
    entries = [entry for p in pieces for entry in p.logprobs]
    assert [e[0] for e in entries] == ["a", "b"] and entries[0][1] == pytest.approx(chosen)
    assert len(entries[0][2]) == 2


def test_a_row_ends_at_its_length_with_what_its_stop_matcher_held():
    pieces: list[Piece] = []
    batch = Batch(TOKENIZER, 1)
    row = batch.add(SamplingOptions(temperature=0.0, stop=("bc",)), 0, 0, pieces.append,
                    max_tokens=2)  # fmt: skip
    logits = np.zeros((2, 1, VOCAB), np.float32)
    logits[0, 0, 0] = logits[1, 0, 1] = 3.0  # "a", then "b", which may start "bc"
    for step in logits:
        batch.next_ids([row], step)
    assert [(p.text, p.finish_reason) for p in pieces] == [("a", None), ("b", "length")]
