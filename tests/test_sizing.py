"""Choosing the model's size from the budget and the measured speed of this machine."""

from __future__ import annotations

import pytest

from textgen.config import ModelConfig
from textgen.training.sizing import (
    CANDIDATE_UNITS,
    CHARS_PER_WEIGHT,
    choose_size,
    fits,
    pick_units,
    sizing_applies,
    weight_count,
)


def shape_of(units: int) -> ModelConfig:
    return ModelConfig(65, embedding_dim=64, units=units)


def test_weight_count_matches_the_keras_model() -> None:
    pytest.importorskip("tensorflow")
    from textgen.model import build_model

    for cell, layers in (("lstm", 1), ("lstm", 2), ("simple", 1)):
        shape = ModelConfig(30, embedding_dim=8, units=12, num_layers=layers, cell=cell)
        assert weight_count(shape) == build_model(shape).count_params(), (cell, layers)


def test_the_largest_size_the_budget_suits_is_kept() -> None:
    budget = 600.0
    # Just enough characters for 512 units: it is kept though smaller ones are faster.
    need = CHARS_PER_WEIGHT * weight_count(shape_of(512)) / budget
    assert pick_units({512: need, 384: 3 * need, 256: 9 * need}, budget, shape_of) == 512
    assert pick_units({512: 0.9 * need, 384: 3 * need}, budget, shape_of) == 384
    # Nothing suits: the smallest measured size learns the most.
    assert pick_units({512: 1.0, 384: 2.0, 256: 3.0}, budget, shape_of) == 256
    assert fits(shape_of(512), need, budget) and not fits(shape_of(512), 0.99 * need, budget)


def test_timing_stops_at_the_first_size_that_fits() -> None:
    timed = []

    def measure(rate_of):
        def run(shape: ModelConfig) -> float:
            timed.append(shape.units)
            return rate_of[shape.units]

        return run

    fast = dict.fromkeys(CANDIDATE_UNITS, 1e9)
    choice = choose_size(600, shape_of, measure(fast))
    assert (choice.units, timed) == (512, [512])
    assert "512 units" in choice.describe()

    timed.clear()
    slow = {512: 5_000.0, 384: 20_000.0, 256: 40_000.0}
    choice = choose_size(600, shape_of, measure(slow))
    assert (choice.units, timed) == (384, [512, 384])
    assert set(choice.rates) == {512, 384} and choice.budget == 600


@pytest.mark.parametrize(
    "settings, resume, init_from, expected",
    [
        ({"max_time": 600}, False, None, True),
        ({"max_time": 600, "batch_size": 64}, False, None, True),
        ({"max_time": 600, "units": 512}, False, None, False),
        ({"max_time": 600, "num_layers": 2}, False, None, False),
        ({"max_time": 600, "cell": "gru"}, False, None, False),
        ({"max_time": 600, "epochs": 3}, False, None, False),
        ({}, False, None, False),
        ({"max_time": 60}, False, None, False),
        ({"max_time": 600}, True, None, False),
        ({"max_time": 600}, False, "base", False),
    ],
)
def test_only_a_budget_run_of_no_given_shape_is_sized(settings, resume, init_from, expected):
    assert sizing_applies(settings, resume=resume, init_from=init_from) is expected


def test_a_budget_run_trains_the_size_its_timing_chose(tmp_path, corpus, monkeypatch) -> None:
    pytest.importorskip("tensorflow")
    import json

    import textgen.training.sizing
    from textgen.checkpoint import load_checkpoint
    from textgen.training.train import train

    # Two tiny candidates; the rule asks more characters of the larger than it can train.
    monkeypatch.setattr(textgen.training.sizing, "CANDIDATE_UNITS", (24, 8))
    monkeypatch.setattr(textgen.training.sizing, "MEASURE_SECONDS", 0.2)
    monkeypatch.setattr(textgen.training.sizing, "MIN_BUDGET", 1.0)
    large = weight_count(ModelConfig(40, embedding_dim=4, units=24))
    monkeypatch.setattr(textgen.training.sizing, "CHARS_PER_WEIGHT", 1e6 / large)
    lines: list[str] = []
    settings = dict(batch_size=8, seq_length=16, embedding_dim=4, max_time=4.0)
    settings.update(tensorboard=False, sample_every=0)
    # embedding_dim is a shape setting: given, it turns the choice off.
    train(corpus, run_dir=tmp_path / "given", progress=False, echo=lines.append, **settings)
    assert not any(line.startswith("size for a") for line in lines)
    del settings["embedding_dim"]
    lines.clear()
    result = train(
        corpus, run_dir=tmp_path / "sized", progress=False, echo=lines.append, **settings
    )
    sized = [line for line in lines if line.startswith("size for a 4 s budget: 8 units")]
    assert sized and "24 units" in sized[0], lines
    saved = json.loads((tmp_path / "sized" / "config.json").read_text())
    assert saved["model"]["units"] == 8 and saved["training"]["units"] == 8
    # Smaller than the default size, so the smaller dropout, as the line says.
    assert saved["training"]["dropout"] == textgen.training.sizing.SMALLER_DROPOUT
    assert sized[0].endswith(f"dropout {textgen.training.sizing.SMALLER_DROPOUT:g}")
    # The timing was part of the budget: the run's clock began with it.
    timing = float(sized[0].split("timed in ")[1].split(" s")[0])
    seconds = load_checkpoint(result.run_dir / "latest.npz").state.seconds
    assert timing - 1 <= seconds <= max(4.0, timing + 1) + 2.0


def test_a_given_dropout_is_kept_when_the_size_shrinks(monkeypatch) -> None:
    pytest.importorskip("tensorflow")
    import textgen.training.sizing
    from textgen.config import TrainConfig
    from textgen.training.sizing import SMALLER_DROPOUT, size_for_budget

    monkeypatch.setattr(textgen.training.sizing, "MEASURE_SECONDS", 0.4)
    config = TrainConfig(max_time=600.0, dropout=0.45)

    def slow_step(shape):
        def step(x, y, seed, lr):
            import time

            time.sleep(0.05 * shape.units / 128)  # the larger, the slower
            return _Loss()

        return step

    for keep, dropout in ((True, 0.45), (False, SMALLER_DROPOUT)):
        sized, choice = size_for_budget(config, 65, slow_step, keep_dropout=keep)
        assert choice.units < CANDIDATE_UNITS[0] and sized.units == choice.units
        assert sized.dropout == dropout and config.dropout == 0.45


class _Loss:
    def numpy(self) -> float:
        return 0.0
