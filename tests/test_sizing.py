"""Choosing the model's size from the budget and the measured speed of this machine."""

from __future__ import annotations

import pytest

from textgen.config import ModelConfig
from textgen.sizing import (
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
        ({"max_time": 600}, True, None, False),
        ({"max_time": 600}, False, "base", False),
    ],
)
def test_only_a_budget_run_of_no_given_shape_is_sized(settings, resume, init_from, expected):
    assert sizing_applies(settings, resume=resume, init_from=init_from) is expected
