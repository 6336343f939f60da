"""The model's size for a time budget: what learns most in the characters this machine will train.

A run with a time budget and no explicit shape (``textgen train CORPUS --max-time 10m``) first
times a few training steps of the default LSTM, and of smaller ones while the larger would see
too few characters, and keeps the largest size whose characters in the budget reach
``CHARS_PER_WEIGHT`` per weight of the model. A larger model learns more from each character
but costs more per character, and in a short budget on a slow CPU the smaller one that sees
several times the text ends lower. ``docs/training.md`` has the measurements that set the rule.

An explicit ``--units``, ``--layers``, ``--embedding-dim`` or ``--cell`` turns the choice off, as
do ``--epochs``, ``--resume`` (the run keeps its shape) and ``--init-from`` (the source's shape);
so do a GPU and a cluster, where the step is not the CPU's. The seconds spent timing count
against the budget; a budget under ``MIN_BUDGET`` keeps the default size.
The batch size is not chosen: on the CPUs measured, batch 64 gained 12-15% in characters per
second over 32 but took half the updates.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from textgen.config import ModelConfig, TrainConfig
from textgen.weights import weight_shapes

# Shorter budgets keep the default: timing sizes would take too much of them.
MIN_BUDGET = 120.0  # seconds
CANDIDATE_UNITS = (512, 384, 256)  # largest first; the first is TrainConfig's default
# A size below the default trains with this dropout unless one was given: in ten minutes on an
# AVX2 CPU, 384 units reached 1.4480 nats with 0.2 against 1.4548 with the default 0.3, and in
# equal epochs held to AVX2 0.1 beat 0.2 (9 epochs: 1.4535 against 1.4586; 11: 1.4402 against
# 1.4434) and matched it at 16 (1.4234 against 1.4225), more than the Zen 3 trained in ten
# minutes; 0 gained no more at 11 (1.4396) and is left to `--dropout 0`.
SMALLER_DROPOUT = 0.1
CHARS_PER_WEIGHT = 10.0  # characters per weight the budget must reach for a size to be kept
MEASURE_SECONDS = 1.5  # timed steps per size, after the warm-up ones
WARMUP_STEPS = 2  # untimed: the first traces the step
# The settings that fix the shape; with any of them given, the run's shape is the user's.
SHAPE_SETTINGS = frozenset({"units", "num_layers", "embedding_dim", "cell"})


def weight_count(shape: ModelConfig) -> int:
    """The trainable weights of a model of ``shape`` (embedding, recurrent layers, output)."""
    return sum(math.prod(dims) for dims in weight_shapes(shape).values())


def sizing_applies(settings: dict, *, resume: bool, init_from: object) -> bool:
    """Whether a run with these explicit settings gets its size chosen from its budget."""
    budget = settings.get("max_time")
    budget_only = budget is not None and budget >= MIN_BUDGET and settings.get("epochs") is None
    return budget_only and not resume and init_from is None and not SHAPE_SETTINGS & set(settings)


def fits(shape: ModelConfig, rate: float, budget: float) -> bool:
    """Whether ``rate`` characters per second for ``budget`` seconds suit a model of ``shape``."""
    return rate * budget >= CHARS_PER_WEIGHT * weight_count(shape)


def pick_units(
    rates: dict[int, float], budget: float, shape_of: Callable[[int], ModelConfig]
) -> int:
    """The largest measured size that ``fits``; with none, the smallest measured size.

    ``rates`` maps units to measured characters per second.
    """
    for units in sorted(rates, reverse=True):
        if fits(shape_of(units), rates[units], budget):
            return units
    return min(rates)


@dataclass(frozen=True)
class SizeChoice:
    """The size a budget run trains, and the measurements behind it."""

    units: int
    rates: dict[int, float]  # characters per second of each size timed
    budget: float  # seconds
    seconds: float  # spent timing

    def describe(self) -> str:
        """One line for the start of the run's output."""
        timed = ", ".join(f"{u} units {r:,.0f} chars/s" for u, r in self.rates.items())
        return (
            f"size for a {self.budget:g} s budget: {self.units} units "
            f"(timed in {self.seconds:.0f} s: {timed}; the largest that trains "
            f"{CHARS_PER_WEIGHT:g} characters per weight is kept)"
        )


def measure_rate(step: Callable, batch_size: int, seq_length: int, vocab_size: int) -> float:
    """Characters per second of ``step``, a training step ``(x, y, seed, lr) -> loss``."""
    import numpy as np

    from textgen.backend import tf

    rng = np.random.default_rng(0)
    ids = tf.constant(rng.integers(0, vocab_size, (batch_size, seq_length), np.int32))
    lr = tf.constant(1e-3)
    for k in range(WARMUP_STEPS):
        step(ids, ids, tf.constant([k, 0]), lr).numpy()
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < MEASURE_SECONDS:
        step(ids, ids, tf.constant([count, 0]), lr).numpy()
        count += 1
    return count * batch_size * seq_length / (time.perf_counter() - start)


def choose_size(
    budget: float,
    shape_of: Callable[[int], ModelConfig],
    measure: Callable[[ModelConfig], float],
) -> SizeChoice:
    """Time the candidate sizes from the largest down and keep the first the budget suits.

    ``measure(shape)`` returns a size's characters per second; timing stops at the first size
    that passes the rule, so a fast machine times only the default.
    """
    started = time.perf_counter()
    rates: dict[int, float] = {}
    for units in CANDIDATE_UNITS:
        rates[units] = measure(shape_of(units))
        if fits(shape_of(units), rates[units], budget):
            break
    seconds = time.perf_counter() - started
    return SizeChoice(pick_units(rates, budget, shape_of), rates, budget, seconds)


def size_for_budget(
    config: TrainConfig,
    vocab_size: int,
    build_step: Callable[[ModelConfig], Callable],
    keep_dropout: bool = False,
) -> tuple[TrainConfig, SizeChoice]:
    """``config`` with the units ``choose_size`` keeps for its budget on this machine.

    ``build_step(shape)`` returns the training step of a throwaway model of ``shape``, built as
    the run will build its own. A size below the default also takes ``SMALLER_DROPOUT``
    unless ``keep_dropout`` (the dropout was given).
    """
    from dataclasses import replace

    def shape_of(units: int) -> ModelConfig:
        return replace(config, units=units).model(vocab_size)

    def measure(shape: ModelConfig) -> float:
        step = build_step(shape)
        return measure_rate(step, config.batch_size, config.seq_length, vocab_size)

    choice = choose_size(config.max_time, shape_of, measure)
    changes: dict = {"units": choice.units}
    if choice.units < CANDIDATE_UNITS[0] and not keep_dropout:
        changes["dropout"] = SMALLER_DROPOUT
    return replace(config, **changes), choice
