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
from collections.abc import Iterable
from importlib import resources
from pathlib import Path
from typing import IO, Any

import numpy as np

from textgen.inspection import (
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
def report_data(
    inspector: Inspector,
    text: str,
    *,
    name: str | None = None,
    layer: int | None = None,
    features: Iterable[Feature] | None = None,
    best: int = BEST_CELLS,
    drop_unknown: bool = False,
) -> dict[str, Any]:
    """The inspection of ``text`` as the viewer takes it (and ``/v1/inspect`` answers).

    Every character's probability, surprise and guesses; the feature rankings; and the
    activations of every ranked cell, keyed ``"h12"`` or ``"c213"``.
    """
    layer = inspector.layer(layer)
    text, _ = inspector.encode(text, drop_unknown)
    table = _id_table(inspector)
    columns = len(inspector.states) * inspector.units
    prob, guesses = [], []
    with tempfile.TemporaryFile(prefix="textgen-inspect-") as spill:

        def keep(block: Block) -> None:
            prob.append(block.prob)
            guesses.extend(_guesses(block, table))
            states = block.h if block.c is None else np.concatenate([block.h, block.c], axis=1)
            spill.write(np.ascontiguousarray(states, np.float32).tobytes())

        inspection = inspect_text(
            inspector, text, layer=layer, features=features, best=best, on_block=keep
        )
        chosen = sorted(
            {(s.state, s.cell) for r in inspection.rankings for s in r.best},
            key=lambda sc: (sc[0], sc[1]),
        )
        index = [inspector.states.index(state) * inspector.units + cell for state, cell in chosen]
        values = _read_columns(spill, len(text), columns, index)
    probs = np.concatenate(prob)
    return {
        **_header(inspector, name, layer, len(text)),
        "text": text,
        "prob": _numbers(probs, PROB_DECIMALS),
        "surprise": _numbers(_surprise(probs), PROB_DECIMALS),
        "top": guesses,
        **_summary_json(inspection),
        "activations": {
            f"{state}{cell}": _numbers(values[:, k], STATE_DECIMALS)
            for k, (state, cell) in enumerate(chosen)
        },
    }


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
    return resources.files("textgen").joinpath("static", name).read_text(encoding="utf-8")


def html_report(data: dict[str, Any]) -> str:
    """A self-contained page (no request leaves it) that shows :func:`report_data`'s data."""
    # Inside <script>, "</" could end the element early; "<\/" is the same JSON string.
    payload = json.dumps(data, ensure_ascii=False, separators=(",", ":")).replace("</", "<\\/")
    title = f"textgen inspect: {data.get('model') or 'model'}, layer {data['layer']}"
    return _PAGE.format(
        title=_escape(title),
        css=viewer_asset("inspect.css"),
        js=viewer_asset("inspect.js"),
        data=payload,
    )


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
        page = html_report(report_data(inspector, text, **options)).encode("utf-8")
        write_path(output, lambda stream: stream.write(page))
    else:
        from textgen.errors import TextgenError

        raise TextgenError(f"unknown format {fmt!r}; choose html or jsonl")
