"""A run as a folder that is a complete, offline web page for the model (``--format web``).

The folder holds::

    index.html      the page: prime, temperature, top-k, top-p, length, seed, Generate and Stop
    textgen.js      the engine: steps the cells one character at a time in plain JavaScript
    model.js        the weights and vocabulary, as a script that sets TEXTGEN_MODEL_DATA
    tokenizer.json  the vocabulary, as every export writes it

The weights travel inside a script, not a file the page fetches, because browsers refuse
``fetch`` of local files: a page opened from disk (``file://``) must get its data through a
``<script src>``, which they allow. The same folder works from any static file server.

Each weight is the run's own array, by the stable names of ``textgen.weights`` (``embedding``,
``rnn_0/kernel``, ``rnn_0/recurrent_kernel``, ``rnn_0/bias``, ..., ``dense/kernel``,
``dense/bias``), stored little-endian as float16 (the default: half the size) or float32
(exact), then base64. Only numpy is needed: no TensorFlow, no onnx.
"""

from __future__ import annotations

import base64
import json
from importlib import resources
from pathlib import Path

import numpy as np

from textgen.cells import get_cell
from textgen.errors import TextgenError
from textgen.run import TOKENIZER, Run, read_history
from textgen.weights import weight_names

WEIGHT_TYPES = ("float16", "float32")
FORMAT = 1  # the layout of model.js; textgen.js checks it
PAGE, ENGINE, MODEL = "index.html", "textgen.js", "model.js"
FILES = (PAGE, ENGINE, MODEL, TOKENIZER)
# The cells textgen.js steps (its CELLS table), by the name model.js gives each.
PAGE_CELLS = {"lstm": "lstm", "gru": "gru", "simple": "simple"}


def model_data(run: Run, weights: str = "float16") -> dict:
    """What model.js holds: the model's shape, vocabulary, details and encoded weights.

    Raises:
        TextgenError: an unknown weight type, or a cell the page cannot step.
    """
    if weights not in WEIGHT_TYPES:
        raise TextgenError(f"unknown weight type {weights!r}; choose float16 or float32")
    shape = run.config.model
    cell = get_cell(shape.cell).equations(PAGE_CELLS, "the web export")
    dtype = np.dtype(weights).newbyteorder("<")
    encoded = {}
    for name in weight_names(shape.num_layers):
        array = np.ascontiguousarray(run.weights[name], dtype=dtype)
        encoded[name] = {
            "shape": list(array.shape),
            "data": base64.b64encode(array.tobytes()).decode("ascii"),
        }
    return {
        "format": FORMAT,
        "cell": cell,
        "num_layers": shape.num_layers,
        "units": shape.units,
        "embedding_dim": shape.embedding_dim,
        "dtype": weights,
        "vocabulary": run.tokenizer.to_json(),
        "details": details(run),
        "weights": encoded,
    }


def details(run: Run) -> dict:
    """The run's details the page shows: name, corpus, shape, epochs and validation losses."""
    corpus = run.config.corpus
    losses = []
    for row in read_history(run.run_dir):
        try:
            losses.append(round(float(row.get("val_loss")), 6))
        except (TypeError, ValueError):
            continue
    finite = [loss for loss in losses if np.isfinite(loss)]
    return {
        "run": run.run_dir.resolve().name,
        "checkpoint": run.which,
        "corpus": corpus.get("name") or corpus.get("source"),
        "characters": corpus.get("characters"),
        "cell": run.config.model.cell,
        "num_layers": run.config.model.num_layers,
        "units": run.config.model.units,
        "embedding_dim": run.config.model.embedding_dim,
        "vocab_size": run.config.model.vocab_size,
        "epochs": run.state.epoch,
        "best_val_loss": min(finite) if finite else None,
        "val_loss": finite,
    }


def model_script(data: dict) -> str:
    """model.js: the data as a script for a page (a global) and for Node (``module.exports``)."""
    # ensure_ascii keeps the file plain ASCII whatever the vocabulary holds.
    body = json.dumps(data, ensure_ascii=True, separators=(",", ":"))
    return (
        "// A textgen character model for textgen.js (textgen export --format web).\n"
        "(function (data) {\n"
        '  if (typeof module === "object" && module.exports) module.exports = data;\n'
        "  else globalThis.TEXTGEN_MODEL_DATA = data;\n"
        f"}})({body});\n"
    )


def template(name: str) -> str:
    """A file of the page kept beside this module (``textgen/export/webpage/``)."""
    return resources.files("textgen.export").joinpath("webpage", name).read_text(encoding="utf-8")


def export_web(run: Run, out: Path, weights: str = "float16") -> None:
    """Write the page's folder ``out`` (which must not exist yet) for ``run``."""
    data = model_data(run, weights)
    title = f"textgen · {data['details']['run']}"
    page = template(PAGE).replace("{{title}}", _html_escape(title))
    out.mkdir()
    (out / PAGE).write_text(page, encoding="utf-8")
    (out / ENGINE).write_text(template(ENGINE), encoding="utf-8")
    (out / MODEL).write_text(model_script(data), encoding="ascii")
    (out / TOKENIZER).write_bytes((run.run_dir / TOKENIZER).read_bytes())


def is_web_export(path: Path) -> bool:
    """True when ``path`` is a folder an earlier web export wrote (so --force may replace it)."""
    return path.is_dir() and all((path / name).is_file() for name in (PAGE, ENGINE, MODEL))


def _html_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
