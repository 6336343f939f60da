"""An inspection written out: JSON lines, a self-contained HTML report, or the data behind both.

The JSON lines stream: a ``header`` line, one ``char`` line per character (with the layer's whole
state) as it is read, and a ``features`` line at the end; memory stays that of one block.

The HTML report and the ``/v1/inspect`` endpoint of ``textgen serve`` share :func:`report_data`
and one viewer (``static/inspect.js``, ``static/inspect.css``). They keep the activations of the
ranked cells only: while the text is read, every state goes to a temporary file (4 bytes per
state per character), and the chosen cells' columns are read back from it once the ranking is
known. The field names are documented in ``docs/inspect.md``.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import IO, Any

import numpy as np

from textgen.sample.inspection import (
    BEST_CELLS,
    Block,
    Feature,
    FeatureRanking,
    Inspection,
    Inspector,
    inspect_text,
)
from textgen.sinks import write_path

# Decimals kept in the numbers written out: well inside the 1e-5 the tests hold them to.
PROB_DECIMALS = 8
STATE_DECIMALS = 6


def _numbers(values: np.ndarray, decimals: int) -> list:
    """Rounded floats as a JSON-ready list, NaN as None."""
    rounded = np.round(np.asarray(values, np.float64), decimals)
    out = rounded.tolist()
    if np.isnan(rounded).any():
        out = _nan_to_none(out)
    return out


def _nan_to_none(values):
    if isinstance(values, list):
        return [_nan_to_none(v) for v in values]
    return None if values != values else values


def _surprise(prob: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore"):
        return -np.log(prob)


def _guesses(block: Block, table: list[str]) -> list[list]:
    """Per character: ``[[char, probability], ...]``, likeliest first; [] for the first."""
    probs = np.round(block.top_probs, PROB_DECIMALS).tolist()
    out = []
    for ids, ps in zip(block.top_ids.tolist(), probs):
        out.append([] if ids[0] < 0 else [[table[i], p] for i, p in zip(ids, ps)])
    return out


def _id_table(inspector: Inspector) -> list[str]:
    return inspector.tokenizer.decode(range(inspector.tokenizer.vocab_size))


def _ranking_json(ranking: FeatureRanking) -> dict[str, Any]:
    feature = ranking.feature
    return {
        "name": feature.name,
        "description": feature.description,
        "pattern": feature.pattern,
        "binary": feature.binary,
        "inside": ranking.inside,
        "note": ranking.note,
        "best": [
            {"state": s.state, "cell": s.cell, "score": round(s.score, 6)} for s in ranking.best
        ],
    }


def _summary_json(inspection: Inspection) -> dict[str, Any]:
    mean = inspection.mean_surprise
    return {
        "mean_surprise": None if mean != mean else round(mean, 6),
        "features": [_ranking_json(r) for r in inspection.rankings],
    }


def _header(inspector: Inspector, name: str | None, layer: int, characters: int) -> dict:
    return {
        "model": name,
        "cell": inspector.cell,
        "layer": layer,
        "layers": inspector.num_layers,
        "units": inspector.units,
        "states": list(inspector.states),
        "characters": characters,
    }


# -- JSON lines ------------------------------------------------------------------------------------
def write_jsonl(
    inspector: Inspector,
    text: str,
    stream: IO[bytes],
    *,
    name: str | None = None,
    layer: int | None = None,
    features: Iterable[Feature] | None = None,
    best: int = BEST_CELLS,
    drop_unknown: bool = False,
) -> Inspection:
    """Write the inspection of ``text`` to a binary stream as JSON lines, block by block."""
    layer = inspector.layer(layer)
    text, _ = inspector.encode(text, drop_unknown)
    table = _id_table(inspector)
    header = {"record": "header", **_header(inspector, name, layer, len(text))}
    stream.write(_line(header))
    chars = iter(text)

    def write_block(block: Block) -> None:
        prob = _numbers(block.prob, PROB_DECIMALS)
        surprise = _numbers(_surprise(block.prob), PROB_DECIMALS)
        guesses = _guesses(block, table)
        h = _numbers(block.h, STATE_DECIMALS)
        c = None if block.c is None else _numbers(block.c, STATE_DECIMALS)
        lines = []
        for t in range(len(block)):
            record = {
                "record": "char",
                "index": block.start + t,
                "char": next(chars),
                "id": int(block.ids[t]),
                "prob": prob[t],
                "surprise": surprise[t],
                "top": guesses[t],
                "h": h[t],
            }
            if c is not None:
                record["c"] = c[t]
            lines.append(_line(record))
        stream.write(b"".join(lines))

    inspection = inspect_text(
        inspector, text, layer=layer, features=features, best=best, on_block=write_block
    )
    stream.write(_line({"record": "features", **_summary_json(inspection)}))
    return inspection


def _line(record: dict) -> bytes:
    return (json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n").encode()


# -- the viewer's data -----------------------------------------------------------------------------
@dataclass
class ReportParts:
    """What the viewer shows, held compactly: per character a few numbers, not Python objects.

    :meth:`as_dict` is the viewer's data; :meth:`json_pieces` is the same as JSON text in pieces
    of ``JSON_ROWS`` characters, so a long report is never one list of Python objects.
    """

    header: dict[str, Any]
    text: str
    table: str  # id -> character
    prob: np.ndarray  # (n,) float64, NaN first
    top_ids: np.ndarray  # (n, k) int64, -1 first
    top_probs: np.ndarray  # (n, k) float64
    summary: dict[str, Any]
    keys: list[str]  # "h12", "c213": the ranked cells
    activations: np.ndarray  # (n, len(keys)) float32

    def _rows(self, field_name: str, lo: int, hi: int) -> list:
        if field_name == "prob":
            return _numbers(self.prob[lo:hi], PROB_DECIMALS)
        if field_name == "surprise":
            return _numbers(_surprise(self.prob[lo:hi]), PROB_DECIMALS)
        if field_name == "top":
            ids, probs = (
                self.top_ids[lo:hi].tolist(),
                np.round(self.top_probs[lo:hi], PROB_DECIMALS),
            )
            return [
                [] if row[0] < 0 else [[self.table[i], p] for i, p in zip(row, ps)]
                for row, ps in zip(ids, probs.tolist())
            ]
        return _numbers(self.activations[lo:hi, self.keys.index(field_name)], STATE_DECIMALS)

    def as_dict(self) -> dict[str, Any]:
        """The viewer's data (``/v1/inspect``'s answer) as one dict."""
        n = len(self.prob)
        return {
            **self.header,
            "text": self.text,
            **{name: self._rows(name, 0, n) for name in ("prob", "surprise", "top")},
            **self.summary,
            "activations": {key: self._rows(key, 0, n) for key in self.keys},
        }

    def json_pieces(self) -> Iterator[str]:
        """:meth:`as_dict` as compact JSON, in pieces."""

        def dump(value) -> str:
            return json.dumps(value, ensure_ascii=False, separators=(",", ":"))

        def rows(name: str) -> Iterator[str]:
            yield "["
            for lo in range(0, len(self.prob), JSON_ROWS):
                yield ("," if lo else "") + dump(self._rows(name, lo, lo + JSON_ROWS))[1:-1]
            yield "]"

        yield "{" + dump({**self.header, "text": self.text})[1:-1]
        for name in ("prob", "surprise", "top"):
            yield f',"{name}":'
            yield from rows(name)
        yield "," + dump(self.summary)[1:-1] + ',"activations":{'
        for k, key in enumerate(self.keys):
            yield ("," if k else "") + f'"{key}":'
            yield from rows(key)
        yield "}}"


JSON_ROWS = 4096


def report_parts(
    inspector: Inspector,
    text: str,
    *,
    name: str | None = None,
    layer: int | None = None,
    features: Iterable[Feature] | None = None,
    best: int = BEST_CELLS,
    drop_unknown: bool = False,
) -> ReportParts:
    """Inspect ``text`` and keep what the viewer shows (see :func:`report_data`)."""
    layer = inspector.layer(layer)
    text, _ = inspector.encode(text, drop_unknown)
    columns = len(inspector.states) * inspector.units
    prob, top_ids, top_probs = [], [], []
    with tempfile.TemporaryFile(prefix="textgen-inspect-") as spill:

        def keep(block: Block) -> None:
            prob.append(block.prob)
            top_ids.append(block.top_ids)
            top_probs.append(block.top_probs)
            states = block.h if block.c is None else np.concatenate([block.h, block.c], axis=1)
            spill.write(np.ascontiguousarray(states, np.float32).tobytes())

        inspection = inspect_text(
            inspector, text, layer=layer, features=features, best=best, on_block=keep
        )
        chosen = sorted({(s.state, s.cell) for r in inspection.rankings for s in r.best})
        index = [inspector.states.index(state) * inspector.units + cell for state, cell in chosen]
        values = _read_columns(spill, len(text), columns, index)
    return ReportParts(
        header=_header(inspector, name, layer, len(text)),
        text=text,
        table=_id_table(inspector),
        prob=np.concatenate(prob),
        top_ids=np.concatenate(top_ids),
        top_probs=np.concatenate(top_probs),
        summary=_summary_json(inspection),
        keys=[f"{state}{cell}" for state, cell in chosen],
        activations=values,
    )


def report_data(inspector: Inspector, text: str, **options) -> dict[str, Any]:
    """The inspection of ``text`` as the viewer takes it (and ``/v1/inspect`` answers).

    The header fields; every character's ``prob``, ``surprise`` and ``top`` guesses; the
    feature rankings; and the ``activations`` of every ranked cell, keyed ``"h12"`` or
    ``"c213"``. ``options`` are :func:`report_parts`'s (``name``, ``layer``, ``features``,
    ``best``, ``drop_unknown``).
    """
    return report_parts(inspector, text, **options).as_dict()


def _read_columns(spill: IO[bytes], rows: int, columns: int, index: list[int]) -> np.ndarray:
    """Columns ``index`` of the (rows, columns) float32 matrix in ``spill``, a block at a time."""
    out = np.empty((rows, len(index)), np.float32)
    spill.seek(0)
    step = max(1, (1 << 22) // (4 * columns))  # about 4 MB read at once
    for start in range(0, rows, step):
        count = min(step, rows - start)
        chunk = np.frombuffer(spill.read(4 * count * columns), np.float32)
        out[start : start + count] = chunk.reshape(count, columns)[:, index]
    return out


# -- the HTML report -------------------------------------------------------------------------------
def viewer_asset(name: str) -> str:
    """The text of one of the viewer's files: ``inspect.js`` or ``inspect.css``."""
    return resources.files("textgen.sample").joinpath("static", name).read_text(encoding="utf-8")


def html_report(data: dict[str, Any] | ReportParts) -> str:
    """A self-contained page (no request leaves it) that shows the viewer's data."""
    return "".join(html_pieces(data))


def html_pieces(data: dict[str, Any] | ReportParts) -> Iterator[str]:
    """:func:`html_report` in pieces, for writing a long report without one big string."""
    if isinstance(data, ReportParts):
        header, pieces = data.header, data.json_pieces()
    else:
        header = data
        pieces = iter([json.dumps(data, ensure_ascii=False, separators=(",", ":"))])
    title = _escape(f"textgen inspect: {header.get('model') or 'model'}, layer {header['layer']}")
    head, tail = _PAGE.split("{data}")
    yield head.format(title=title, css=viewer_asset("inspect.css"))
    for piece in pieces:
        # Inside <script>, "</" could end the element early; "<\\/" is the same JSON string.
        # Pieces end between JSON values, so no "</" is split between two of them.
        yield piece.replace("</", "<\\/")
    yield tail.format(js=viewer_asset("inspect.js"))


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<link rel="icon" href="data:,">
<style>
body {{ margin: 0; padding: 1rem; font: 15px/1.45 system-ui, sans-serif; color: #1d232a;
       background: #f7f8fa; }}
h1 {{ font-size: 1.1rem; margin: 0 0 .6rem; }}
{css}
</style>
</head>
<body>
<h1>{title}</h1>
<div id="inspection"></div>
<script type="application/json" id="inspection-data">{data}</script>
<script>
{js}
textgenInspect.render(document.getElementById("inspection"),
  JSON.parse(document.getElementById("inspection-data").textContent));
</script>
</body>
</html>
"""


def write_report(
    inspector: Inspector,
    text: str,
    output: str | Path,
    *,
    fmt: str = "html",
    name: str | None = None,
    layer: int | None = None,
    features: Iterable[Feature] | None = None,
    best: int = BEST_CELLS,
    drop_unknown: bool = False,
) -> None:
    """Inspect ``text`` and write the report to ``output`` (``-``: stdout) as html or jsonl.

    The path is written through ``textgen.sinks.write_path``: a file is replaced only once the
    whole report is written, so a failure leaves what was there.
    """
    options = dict(name=name, layer=layer, features=features, best=best, drop_unknown=drop_unknown)
    if fmt == "jsonl":
        layer = inspector.layer(layer)
        inspector.encode(text, drop_unknown)  # refuse a bad text before the output is opened
        write_path(output, lambda stream: write_jsonl(inspector, text, stream, **options))
    elif fmt == "html":
        parts = report_parts(inspector, text, **options)

        def write(stream: IO[bytes]) -> None:
            for piece in html_pieces(parts):
                stream.write(piece.encode("utf-8"))

        write_path(output, write)
    else:
        from textgen.errors import TextgenError

        raise TextgenError(f"unknown format {fmt!r}; choose html or jsonl")
