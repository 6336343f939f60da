"""Beam search: the most likely continuation a beam of a given width finds (see ``sampler``'s
notes for the search and its score). It draws no randomness, so only the prime, stop strings and
``drop_unknown`` of the sampling options apply."""

from __future__ import annotations

import copy
from collections.abc import Sequence

import numpy as np

from textgen.errors import TextgenError
from textgen.sample.draw import log_softmax
from textgen.sample.generation import ScoredText, StopMatcher
from textgen.sample.options import SamplingOptions


def beam_search(
    sampler, prime: str, length: int, beam_width: int, stop, drop_unknown: bool
) -> ScoredText:
    """Check the arguments, then search on ``sampler``'s numpy engine (``Sampler.beam_search``).

    Raises:
        TextgenError: a bad width, length, stop string or prime character, or the Keras engine.
    """
    options = SamplingOptions(prime=prime, stop=stop, drop_unknown=drop_unknown)
    if isinstance(beam_width, bool) or not isinstance(beam_width, int) or beam_width < 1:
        raise TextgenError(f"the beam width must be an integer >= 1, got {beam_width!r}")
    if length < 0:
        raise TextgenError(f"length must be >= 0, got {length}")
    if not hasattr(sampler.engine, "state"):
        raise TextgenError("beam search needs the numpy engine")
    prime_ids = sampler.prime_ids(options.prime, options.drop_unknown)
    unknown = sampler.tokenizer.unknown_id
    return search(
        sampler.engine, prime_ids, length, beam_width, sampler.tokenizer.chars, options.stop,
        None if unknown is None else [unknown],
    )  # fmt: skip


def search(
    stack,
    prime_ids: np.ndarray,
    length: int,
    width: int,
    chars: Sequence[str],
    stop: Sequence[str],
    exclude: list[int] | None,
) -> ScoredText:
    """Beam search on a ``RecurrentStack``; the beams are its batch rows."""

    stack.reset(1)
    logits = stack.feed(prime_ids[None, :])
    totals = np.zeros(1)  # each live beam's total log-probability
    texts = [""]  # each live beam's text released by its stop matcher
    matchers = [StopMatcher(stop)]
    ended: list[ScoredText] = []
    for step in range(1, length + 1):
        logp = log_softmax(logits)
        if exclude is not None:
            logp[:, exclude] = -np.inf
        candidates = (totals[:, None] + logp).ravel()
        # Stable, so that a tie goes to the lower id of the earlier beam, as argmax does.
        order = np.argsort(-candidates, kind="stable")
        parents, ids, new_totals, new_texts, new_matchers = [], [], [], [], []
        for rank, flat in enumerate(order.tolist()):
            total = float(candidates[flat])
            if len(ids) == width or total == -np.inf:
                break
            parent, char_id = divmod(flat, logp.shape[1])
            matcher = copy.copy(matchers[parent])
            text = texts[parent] + matcher.feed(chars[char_id])
            if matcher.done:
                if rank < width:
                    ended.append(ScoredText(text, total / step))
                continue
            parents.append(parent)
            ids.append(char_id)
            new_totals.append(total)
            new_texts.append(text)
            new_matchers.append(matcher)
        if len(ended) >= width or not ids:
            break
        if step == length:
            ended += [
                ScoredText(text + m.flush(), total / length)
                for text, m, total in zip(new_texts, new_matchers, new_totals)
            ]
            break
        stack.state = stack.state[:, :, parents]
        logits = stack.step(np.array(ids, dtype=np.int64))
        totals, texts, matchers = np.array(new_totals), new_texts, new_matchers
    if not ended:  # length 0
        return ScoredText("", 0.0)
    return max(ended, key=lambda beam: beam.score)  # the first of equals: found earlier
