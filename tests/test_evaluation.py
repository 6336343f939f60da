"""Validation windows with context, and the losses computed over them."""

import numpy as np
import pytest

pytest.importorskip("tensorflow")

from textgen.model import build_model, get_weights  # noqa: E402
from textgen.sample.engine import RecurrentStack  # noqa: E402
from textgen.training.evaluation import build_eval_step, evaluate_file, evaluate_ids  # noqa: E402
from textgen.training.windows import validation_dataset  # noqa: E402

VOCAB = 11


def _ids(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, VOCAB, n).astype(np.int32)


@pytest.mark.parametrize("context", [0, 5, 7, 1000])
def test_validation_windows_score_every_character_once_after_its_context(context) -> None:
    ids, seq = _ids(103), 10
    usable_context = min(context, len(ids) - 1 - seq)
    scored_targets = []
    for x, y, first in validation_dataset(ids, seq, batch_size=4, context=context):
        for row_x, row_y, f in zip(x, y, first, strict=True):
            position = len(scored_targets)  # text position of the first scored input
            start = max(0, position - usable_context)
            np.testing.assert_array_equal(row_x, ids[start : start + len(row_x)])
            np.testing.assert_array_equal(row_y, ids[start + 1 : start + 1 + len(row_x)])
            assert f == position - start
            scored_targets.extend(row_y[f : f + seq])
    usable = (len(ids) - 1) // seq * seq
    np.testing.assert_array_equal(scored_targets, ids[1 : usable + 1])


def _reference_losses(model, ids: np.ndarray) -> np.ndarray:
    """Per-character loss with the state carried over the whole text, stepped in numpy."""
    stack = RecurrentStack(get_weights(model))
    losses = []
    for t in range(len(ids) - 1):
        logits = stack.step(ids[t : t + 1])[0].astype(np.float64)
        log_probs = logits - np.log(np.exp(logits - logits.max()).sum()) - logits.max()
        losses.append(-log_probs[ids[t + 1]])
    return np.array(losses)


def test_loss_with_full_context_equals_the_stateful_loss_over_the_text() -> None:
    model = build_model(VOCAB, embedding_dim=3, units=6)
    ids = _ids(61, seed=1)
    step = build_eval_step(model)
    reference = _reference_losses(model, ids)
    usable = (len(ids) - 1) // 8 * 8
    got = evaluate_ids(step, ids, seq_length=8, batch_size=3, context=len(ids))
    assert got == pytest.approx(reference[:usable].mean(), rel=1e-5)


def test_loss_without_context_restarts_every_window_from_a_zero_state() -> None:
    model = build_model(VOCAB, embedding_dim=3, units=6)
    ids = _ids(41, seed=2)
    step = build_eval_step(model)
    windows = [ids[s : s + 11] for s in range(0, 40, 10)]
    expected = np.mean([_reference_losses(model, w).mean() for w in windows])
    assert evaluate_ids(step, ids, seq_length=10, context=0) == pytest.approx(expected, rel=1e-5)
    # Context helps a model only if it learned to use it, but it must change the number.
    assert evaluate_ids(step, ids, seq_length=10, context=10) != pytest.approx(expected, rel=1e-7)


def test_eval_of_a_run_defaults_to_its_validation_context(trained_run, tmp_path) -> None:
    text = tmp_path / "held_out.txt"
    text.write_text("The lazy dog naps on warm mats while the quick fox jumps.\n" * 4)
    default = evaluate_file(trained_run, str(text))
    assert default == pytest.approx(evaluate_file(trained_run, str(text), context=100), rel=1e-6)
    assert default != pytest.approx(evaluate_file(trained_run, str(text), context=0), rel=1e-6)
