"""The one generation loop's core: rows of a batch, each drawing by its own options.

``Sampler`` drives it in the caller's thread and the server's ``Scheduler`` in its engine thread,
so seeding, the draw, stop strings, scores and log-probabilities are written once. It knows
nothing of engines: a driver feeds the engine and hands each step's logits here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple


class StopMatcher:
    """Finds stop strings in a growing text and holds back what might still become one."""

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = list(stops)
        self.pending = ""
        self.done = False

    def feed(self, char: str) -> str:
        """Add one character; return the text that is now safe to emit."""
        self.pending += char
        for stop in self.stops:
            at = self.pending.find(stop)
            if at >= 0:
                self.done = True
                out, self.pending = self.pending[:at], ""
                return out
        for i in range(len(self.pending)):
            tail = self.pending[i:]
            if any(stop.startswith(tail) for stop in self.stops):
                out, self.pending = self.pending[:i], tail
                return out
        out, self.pending = self.pending, ""
        return out

    def flush(self) -> str:
        """The text held back when the sample ends without a stop."""
        out, self.pending = self.pending, ""
        return out


class ScoredText(NamedTuple):
    """A continuation and its score: the mean log-probability per generated character."""

    text: str
    score: float
