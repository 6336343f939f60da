"""Character-level tokenizer: text <-> integer ids, with a stable, saved vocabulary."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from textgen.errors import CheckpointError, TextgenError, VocabularyError
from textgen.files import write_text

UNKNOWN_CHAR = "\ufffd"  # what an unknown id decodes to


def _codepoints(text: str) -> np.ndarray:
    """The text's code points as a uint32 array, without a Python loop over characters."""
    return np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)


def _describe(chars: Iterable[str], limit: int = 10) -> str:
    chars = sorted(set(chars))
    shown = ", ".join(repr(c) for c in chars[:limit])
    more = f" and {len(chars) - limit} more" if len(chars) > limit else ""
    return f"{shown}{more}"


class Tokenizer:
    """Maps each character to an id; ids follow the characters' code point order.

    Sorting by code point (not by first appearance or frequency) makes the vocabulary a pure
    function of the set of characters, so the same corpus always gives the same ids. A
    vocabulary extended for fine-tuning (``extended``) keeps its source's ids and appends the
    new characters after them, so its order is kept as given (``ordered=True``), and saved so.

    With ``unknown=True`` one extra id (the last) stands for every character outside the
    vocabulary; it is used when a corpus has more distinct characters than ``max_vocab``.
    """

    def __init__(
        self, chars: Sequence[str], *, unknown: bool = False, ordered: bool = False
    ) -> None:
        chars = list(chars)
        if any(len(c) != 1 for c in chars):
            raise TextgenError("a vocabulary entry must be exactly one character")
        if len(set(chars)) != len(chars):
            raise TextgenError("the vocabulary has a repeated character")
        self.chars: list[str] = chars if ordered else sorted(chars)
        self.unknown = unknown
        points = np.array([ord(c) for c in self.chars], dtype=np.uint32)
        # encode() searches the sorted code points, then maps each position to its id.
        self._order = np.argsort(points, kind="stable")
        self._points = points[self._order]
        self._index = {c: i for i, c in enumerate(self.chars)}

    @classmethod
    def from_text(cls, text: str, *, max_vocab: int | None = None) -> Tokenizer:
        """Build the vocabulary of ``text``; with ``max_vocab`` keep the most frequent chars."""
        return cls.from_counts(np.bincount(_codepoints(text)), max_vocab=max_vocab)

    @classmethod
    def from_counts(cls, counts: np.ndarray, *, max_vocab: int | None = None) -> Tokenizer:
        """Build the vocabulary from character counts indexed by code point.

        Characters beyond ``max_vocab`` (the least frequent, ties broken by code point) share one
        unknown id, so ``max_vocab`` counts the known characters only.
        """
        present = np.flatnonzero(counts)
        if max_vocab is not None and len(present) > max_vocab:
            if max_vocab < 1:
                raise TextgenError("max_vocab must be at least 1")
            order = np.lexsort((present, -counts[present]))[:max_vocab]
            return cls([chr(p) for p in present[order]], unknown=True)
        return cls([chr(p) for p in present])

    def extended(self, counts: np.ndarray, *, max_vocab: int | None = None) -> Tokenizer:
        """This vocabulary with the characters of ``counts`` (by code point) it lacks appended.

        Every character keeps its id; new ones follow in code point order. With ``max_vocab``
        (which counts the known characters, old and new) only the most frequent new characters
        that fit are appended and the rest share the unknown id, which then exists and, as in
        every vocabulary, is the last id.
        """
        present = np.flatnonzero(counts)
        new = [p for p in present if chr(p) not in self._index]
        unknown = self.unknown
        room = None if max_vocab is None else max(0, max_vocab - len(self.chars))
        if room is not None and len(new) > room:
            ranked = np.lexsort((np.array(new), -counts[new]))[:room]
            new = sorted(np.array(new)[ranked].tolist())
            unknown = True
        return Tokenizer(self.chars + [chr(p) for p in new], unknown=unknown, ordered=True)

    @property
    def vocab_size(self) -> int:
        """Number of ids, including the unknown id if there is one."""
        return len(self.chars) + int(self.unknown)

    @property
    def unknown_id(self) -> int | None:
        """The id of unknown characters, or None when every character is known."""
        return len(self.chars) if self.unknown else None

    def encode(self, text: str, *, drop_unknown: bool = False) -> np.ndarray:
        """Return the ids of ``text`` as an int32 array.

        A character outside the vocabulary maps to the unknown id when the tokenizer has one;
        otherwise it is dropped with ``drop_unknown=True``, or raises VocabularyError naming it.
        """
        points = _codepoints(text)
        if len(self._points) == 0:
            positions = np.zeros(len(points), dtype=np.intp)
            known = np.zeros(len(points), dtype=bool)
        else:
            positions = np.searchsorted(self._points, points)
            clipped = np.minimum(positions, len(self._points) - 1)
            known = self._points[clipped] == points
            positions = self._order[clipped]
        ids = positions.astype(np.int32)
        if known.all():
            return ids
        if self.unknown:
            ids[~known] = self.unknown_id
            return ids
        if drop_unknown:
            return ids[known]
        missing = {chr(p) for p in np.unique(points[~known])}
        raise VocabularyError(f"characters not in the vocabulary: {_describe(missing)}")

    def decode(self, ids: Iterable[int]) -> str:
        """Return the text for a sequence of ids; the unknown id decodes to U+FFFD."""
        table = self.chars + ([UNKNOWN_CHAR] if self.unknown else [])
        try:
            return "".join(table[i] for i in np.asarray(ids, dtype=np.int64).ravel())
        except IndexError:
            raise TextgenError(f"id out of range for a vocabulary of {self.vocab_size}") from None

    def to_json(self) -> dict:
        """The tokenizer as a JSON-ready dict."""
        return {"chars": "".join(self.chars), "unknown": self.unknown}

    def save(self, path: str | os.PathLike) -> None:
        """Atomically write the vocabulary to a JSON file."""
        write_text(path, json.dumps(self.to_json(), ensure_ascii=True))

    @classmethod
    def from_json(cls, data: dict) -> Tokenizer:
        """The tokenizer of a dict written by ``to_json``."""
        # Saved vocabularies are in id order: sorted, or extended by fine-tuning.
        return cls(list(data["chars"]), unknown=bool(data.get("unknown", False)), ordered=True)

    @classmethod
    def load(cls, path: str | os.PathLike) -> Tokenizer:
        """Read a vocabulary written by ``save``."""
        try:
            return cls.from_json(json.loads(Path(path).read_text(encoding="utf-8")))
        except FileNotFoundError:
            raise CheckpointError(f"no tokenizer file at {path}") from None
        except (ValueError, KeyError, TypeError) as err:
            raise CheckpointError(f"damaged tokenizer file {path}: {err}") from None

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, Tokenizer)
            and self.chars == other.chars
            and self.unknown == other.unknown
        )

    def __repr__(self) -> str:
        return f"Tokenizer(vocab_size={self.vocab_size})"
