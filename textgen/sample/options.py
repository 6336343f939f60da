"""Sampling options, checked once: what every way of sampling (Python, CLI, server) passes on."""

from __future__ import annotations

import math
import secrets
from dataclasses import dataclass

import numpy as np

from textgen.errors import OptionsError, TextgenError

SEED_BITS = 63  # seeds lie in [0, 2**63): what every front door accepts, the server's included


def random_seed() -> int:
    """A fresh seed for a sample that was given none, in ``[0, 2**SEED_BITS)``."""
    return secrets.randbits(SEED_BITS)


def best_of_rows(count: int, best_of: int | None, names: tuple[str, str] = ("best_of", "n")) -> int:
    """The samples drawn to return ``count`` of them: ``best_of``, or ``count`` when not given.

    ``names`` are the two values' names as the caller's users know them (flags, fields).

    Raises:
        OptionsError: ``best_of`` is smaller than ``count``.
    """
    if best_of is None:
        return count
    if best_of < count:
        raise OptionsError(f"{names[0]} ({best_of}) must be at least {names[1]} ({count})")
    return best_of


@dataclass(frozen=True)
class SamplingOptions:
    """How to draw a sample. Invalid values raise TextgenError when the object is made.

    Attributes:
        temperature: divides the logits; 0 means greedy (argmax, ignoring top-k and top-p).
        top_k: draw only from the k most likely characters.
        top_p: draw only from the smallest set of characters whose probability reaches p.
        seed: the same seed gives the same text; sample i of a batch draws from its own
            generator seeded with (seed, i). None picks a random seed.
        prime: text fed through the model before the sample starts.
        drop_unknown: drop prime characters outside the vocabulary instead of failing.
        stop: strings that end a sample when it produces one (not included in the text).
    """

    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    seed: int | None = None
    prime: str = ""
    drop_unknown: bool = False
    stop: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        stop = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)
        object.__setattr__(self, "stop", stop)
        temperature = self.temperature
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float, np.floating)):
            raise TextgenError(f"temperature must be a finite number >= 0, got {temperature!r}")
        if not math.isfinite(temperature) or temperature < 0:
            raise TextgenError(f"temperature must be a finite number >= 0, got {temperature}")
        if self.top_k is not None and self.top_k < 1:
            raise TextgenError(f"top-k must be at least 1, got {self.top_k}")
        if self.top_p is not None and not (0.0 < self.top_p <= 1.0):
            raise TextgenError(f"top-p must be in (0, 1], got {self.top_p}")
        if any(not isinstance(s, str) for s in stop):
            raise TextgenError("stop strings must be strings")
        if any(s == "" for s in stop):
            raise TextgenError("a stop string must not be empty")
        if not isinstance(self.prime, str):
            raise TextgenError("the prime must be a string")

    @classmethod
    def of(cls, options: SamplingOptions | None = None, **values) -> SamplingOptions:
        """``options`` as given, or options made from keyword values (the Python API's form)."""
        if options is not None:
            if values:
                raise TextgenError("pass either a SamplingOptions or keyword options, not both")
            return options
        return cls(**values)
