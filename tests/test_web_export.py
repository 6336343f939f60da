"""``textgen export RUN OUT --format web``: the folder, its engine in Node and the page in real
headless Chromium opened from ``file://``.

Greedy text is held to ``textgen sample --temperature 0`` and logits to the numpy engine (1e-4)
for every cell: the trained tiny LSTM and hand-made runs with random weights (``make_run`` of
test_export) for a SimpleRNN whose vocabulary has an unknown id, a GRU, and 2-layer GRU, LSTM
and SimpleRNN stacks. Unit counts that are not multiples of 16 (19 spans two blocks) exercise the
padded rows. The random networks are kept small: a random SimpleRNN of 17 units is chaotic
enough that float32 rounding differences double every step, in any two engines.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import chromium, watched_page
from test_export import make_run

from textgen.checkpoint import Checkpoint, save_checkpoint
from textgen.cli.commands import main
from textgen.config import ModelConfig, RunConfig, TrainConfig
from textgen.errors import TextgenError
from textgen.export.formats import export_run
from textgen.export.web import FILES, MODEL, PAGE
from textgen.run import BEST, TOKENIZER, open_run, write_config
from textgen.sample.engine import RecurrentStack
from textgen.tokenizer import Tokenizer
from textgen.weights import weight_names, weight_shapes

PRIME = "the "
LENGTH = 120
TEXT = "the quick brown fox jumps over a lazy dog.\nwhile cats nap on warm mats "
NODE = shutil.which("node")
ENGINES = ("wasm-simd", "js")


@pytest.fixture(scope="module")
def runs(trained_run, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("web_runs")
    return {
        "lstm": trained_run,
        "gru": make_run(root / "gru", trained_run, cell="gru", layers=1, units=19),
        "simple_unk": make_run(
            root / "simple", trained_run, cell="simple", layers=1, units=9, max_vocab=20
        ),
        "lstm2": make_run(root / "lstm2", trained_run, cell="lstm", layers=2, units=7),
        "gru2": make_run(root / "gru2", trained_run, cell="gru", layers=2, units=6),
        "simple2": make_run(root / "simple2", trained_run, cell="simple", layers=2, units=9),
    }


@pytest.fixture(scope="module")
def pages(runs, tmp_path_factory) -> dict[str, Path]:
    """Every run exported with exact (float32) weights."""
    root = tmp_path_factory.mktemp("web_pages")
    return {
        name: export_run(run, root / name, "web", weights="float32") for name, run in runs.items()
    }


@pytest.fixture(scope="module")
def greedy(runs) -> dict[str, str]:
    """What ``textgen sample --temperature 0`` prints after the prime, for every run."""
    texts = {}
    for name, run in runs.items():
        args = ["sample", "--checkpoint", str(run), "--temperature", "0"]
        result = CliRunner().invoke(main, [*args, "--prime", PRIME, "--length", str(LENGTH)])
        assert result.exit_code == 0, result.output
        assert result.output.startswith(PRIME) and result.output.endswith("\n")
        texts[name] = result.output[len(PRIME) : -1]
        assert len(texts[name]) == LENGTH
    return texts


def numpy_logits(run: Path, text: str) -> np.ndarray:
    """The numpy engine's logits after each character of ``text``, from the zero state."""
    loaded = open_run(run)
    stack = RecurrentStack(loaded.weights, loaded.config.model.cell)
    return np.array([stack.step(np.array([i])).copy()[0] for i in loaded.tokenizer.encode(text)])


def read_model_js(folder: Path) -> dict:
    text = (folder / MODEL).read_text(encoding="ascii")
    return json.loads(re.search(r"\}\)\((\{.*\})\);\s*$", text, re.S).group(1))


# -- the folder ------------------------------------------------------------------------------------


@pytest.mark.parametrize("weights", ["float32", "float16"])
def test_folder_holds_the_page_the_engine_and_the_weights(trained_run, tmp_path, weights):
    out = export_run(trained_run, tmp_path / "page", "web", weights=weights)
    assert sorted(p.name for p in out.iterdir()) == sorted(FILES)
    assert not (tmp_path / TOKENIZER).exists()  # the folder is self-contained
    assert (out / TOKENIZER).read_bytes() == (trained_run / TOKENIZER).read_bytes()
    page = (out / PAGE).read_text(encoding="utf-8")
    assert '<script src="model.js"></script>' in page and "{{" not in page
    assert not re.search(r"(src|href)=\"(https?:)?//", page)  # nothing from elsewhere
    data = read_model_js(out)
    run = open_run(trained_run)
    assert data["cell"] == "lstm" and data["dtype"] == weights
    assert data["vocabulary"] == run.tokenizer.to_json()
    assert data["details"]["run"] == trained_run.name and data["details"]["epochs"] >= 1
    assert list(data["weights"]) == weight_names(1)
    import base64

    for name, entry in data["weights"].items():
        got = np.frombuffer(base64.b64decode(entry["data"]), np.dtype(weights).newbyteorder("<"))
        want = run.weights[name].astype(weights)
        assert entry["shape"] == list(want.shape)
        np.testing.assert_array_equal(got.reshape(want.shape), want)


def test_default_lstm_folder_is_under_6_mb_with_float16_weights(tmp_path):
    # The default shape (embedding 64, one LSTM layer of 512 units) with a generous vocabulary;
    # random weights: the size does not depend on training.
    shape = ModelConfig(vocab_size=100)
    assert (shape.units, shape.num_layers, shape.cell) == (512, 1, "lstm")
    run = tmp_path / "run"
    run.mkdir()
    rng = np.random.default_rng(0)
    weights = {k: rng.normal(0, 0.1, s).astype(np.float32) for k, s in weight_shapes(shape).items()}
    Tokenizer([chr(c) for c in range(32, 132)]).save(run / TOKENIZER)
    save_checkpoint(run / BEST, Checkpoint(weights))
    write_config(run, RunConfig(shape, TrainConfig()))
    sizes = {}
    for kind in ("float16", "float32"):
        out = export_run(run, tmp_path / kind, "web", weights=kind)
        sizes[kind] = sum(f.stat().st_size for f in out.iterdir())
    assert sizes["float16"] < 6_000_000
    assert sizes["float32"] > 1.9 * sizes["float16"]


def test_export_refuses_what_it_must_not_replace(trained_run, tmp_path):
    out = export_run(trained_run, tmp_path / "page", "web")
    assert read_model_js(out)["dtype"] == "float16"  # the default
    with pytest.raises(TextgenError, match="already exists; pass --force"):
        export_run(trained_run, out, "web")
    export_run(trained_run, out, "web", force=True, weights="float32")  # an earlier export
    assert read_model_js(out)["dtype"] == "float32"
    other = tmp_path / "photos"
    other.mkdir()
    (other / "cat.jpg").write_bytes(b"keep me")
    with pytest.raises(TextgenError, match="not a web export"):
        export_run(trained_run, other, "web", force=True)
    assert (other / "cat.jpg").read_bytes() == b"keep me"
    notes = tmp_path / "notes.txt"
    notes.write_text("keep me too", encoding="utf-8")
    with pytest.raises(TextgenError, match="not a web export"):
        export_run(trained_run, notes, "web", force=True)
    assert notes.read_text(encoding="utf-8") == "keep me too"
    with pytest.raises(TextgenError, match="--weights applies to --format web only"):
        export_run(trained_run, tmp_path / "m.onnx", "onnx", weights="float16")
    with pytest.raises(TextgenError, match="unknown weight type"):
        export_run(trained_run, tmp_path / "new", "web", weights="int8")
    assert not (tmp_path / "new").exists() and not (tmp_path / "m.onnx").exists()


def test_command_line_exports_without_tensorflow(trained_run, tmp_path):
    out = tmp_path / "site"
    code = (
        "import sys\nfrom textgen.cli.commands import main\n"
        "try:\n    main(sys.argv[1:])\nexcept SystemExit as end:\n    assert not end.code, end\n"
        "assert 'tensorflow' not in sys.modules and 'onnx' not in sys.modules\n"
    )
    args = ["export", str(trained_run), str(out), "--format", "web"]
    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"exported web model to {out}"
    assert (out / PAGE).is_file()
    again = CliRunner().invoke(main, args)
    assert again.exit_code == 1
    assert again.output.strip().splitlines() == [
        f"Error: {out} already exists; pass --force to replace it"
    ]
    bad = CliRunner().invoke(main, [*args[:3], "--format", "web", "--weights", "int8"])
    assert bad.exit_code == 2 and "int8" in bad.output


# -- Node ------------------------------------------------------------------------------------------

NODE_SCRIPT = r"""
const [folder, engine, prime, length, text] = process.argv.slice(2);
const textgen = require(folder + "/textgen.js");
const model = engine === "default"
  ? textgen.model : textgen.load(require(folder + "/model.js"), { engine });
const attempt = async (prime, options) => {
  try {
    await model.generate(prime, options);
    return "accepted";
  } catch (err) {
    return err.name + ": " + err.message;
  }
};
(async () => {
  const greedy = await model.generate(prime, { length: Number(length), temperature: 0 });
  const logits = model.logits(text).map((row) => Array.from(row));
  const seeded = [];
  for (const seed of [7, 7, 8]) {
    seeded.push(await model.generate(prime, { length: 200, temperature: 1, seed }));
  }
  const topK1 = await model.generate(
    prime, { length: Number(length), temperature: 1.5, topK: 1, seed: 3 });
  const errors = [];
  for (const bad of [{ length: -1 }, { temperature: NaN }, { topK: 0 }, { topP: 1.5 },
                     { seed: 0.5 }]) {
    errors.push(await attempt(prime, bad));
  }
  errors.push(await attempt(prime, { top_k: 3 }));
  errors.push(await attempt(42, { length: 3 }));
  errors.push(await attempt("\u{1F600}", { length: 3 }));
  console.log(JSON.stringify({ engine: model.engine, greedy, logits, seeded, topK1, errors }));
})().catch((err) => { console.error(err); process.exit(1); });
"""


@pytest.fixture(scope="module")
def node(tmp_path_factory) -> Path:
    if NODE is None:
        if os.environ.get("CI"):
            pytest.fail("CI needs node (.ci/run installs Debian's nodejs)", pytrace=False)
        pytest.skip("node is not installed")
    script = tmp_path_factory.mktemp("node") / "check.js"
    script.write_text(NODE_SCRIPT, encoding="utf-8")
    return script


def run_node(script: Path, folder: Path, engine: str) -> dict:
    args = [NODE, str(script), str(folder), engine, PRIME, str(LENGTH), TEXT]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout)


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("name", ["lstm", "gru", "simple_unk", "lstm2", "gru2", "simple2"])
def test_node_matches_the_command_line_and_the_numpy_engine(
    node, runs, pages, greedy, name, engine
):
    got = run_node(node, pages[name], engine)
    assert got["engine"] == engine
    np.testing.assert_allclose(got["logits"], numpy_logits(runs[name], TEXT), atol=1e-4, rtol=0)
    assert got["greedy"] == greedy[name]
    assert got["topK1"] == greedy[name]  # top-k 1 leaves the greedy choice at any temperature
    first, again, other = got["seeded"]
    assert first == again and first != other and len(first) == 200
    if name == "simple_unk":  # the unknown id is made likely, and is never drawn
        assert "\ufffd" not in first + other + got["greedy"]
    # An emoji is the unknown id where the vocabulary has one, else an error naming it.
    emoji = ["accepted"] if name == "simple_unk" else ["RangeError"]
    assert [e.split(":")[0] for e in got["errors"]] == ["RangeError"] * 5 + [
        "TypeError"
    ] * 2 + emoji
    assert "unknown option top_k" in got["errors"][5]
    assert name == "simple_unk" or "not in the vocabulary" in got["errors"][-1]


def test_node_loads_the_folders_own_model(node, pages, greedy):
    got = run_node(node, pages["lstm"], "default")
    assert got["greedy"] == greedy["lstm"]


# -- the page in Chromium, from file:// ------------------------------------------------------------


@pytest.fixture(scope="module")
def browser():
    with chromium() as launched:
        yield launched


def open_page(browser, folder: Path):
    """The folder's index.html from disk, recording console errors and every request."""
    page = watched_page(browser, 20000)
    page.goto((folder / PAGE).resolve().as_uri())
    page.wait_for_function("document.getElementById('status').textContent === 'ready'")
    return page


def assert_offline_and_clean(page, folder: Path) -> None:
    inside = folder.resolve().as_uri() + "/"
    assert [u for u in page.urls if not (u.startswith(inside) or u.startswith("data:"))] == []
    assert page.errors == []


def test_page_from_disk_streams_and_stops(browser, runs, tmp_path):
    folder = export_run(runs["lstm"], tmp_path / "page", "web")  # float16, the default
    page = open_page(browser, folder)
    try:
        assert runs["lstm"].name in page.inner_text("#details")
        assert page.evaluate("window.textgen.model.dtype") == "float16"
        page.fill("#prime", "The ")
        page.fill("#length", "1000000")
        page.fill("#seed", "5")
        page.click("#generate")
        page.wait_for_function("document.getElementById('output').textContent.length > 2000")
        assert page.inner_text("#status") == "generating…"  # text shows while it is made
        assert page.is_disabled("#generate") and page.is_enabled("#stop")
        page.click("#stop")
        page.wait_for_function("document.getElementById('status').textContent === 'stopped'")
        assert page.text_content("#output").startswith("The ")
        # A finished sample with the same seed is the same text.
        page.fill("#length", "300")
        page.click("#generate")
        page.wait_for_function("document.getElementById('status').textContent === 'done'")
        first = page.text_content("#output")
        page.click("#generate")
        page.wait_for_function(
            "document.getElementById('status').textContent === 'done'"
            " && !document.getElementById('generate').disabled"
        )
        assert page.text_content("#output") == first and len(first) == len("The ") + 300
        page.fill("#top-p", "7")  # out of range: a message, nothing generated
        page.click("#generate")
        assert "top-p" in page.inner_text("#error")
        assert page.text_content("#output") == first
        assert_offline_and_clean(page, folder)
    finally:
        page.close()


@pytest.mark.parametrize("name", ["lstm", "gru", "simple_unk", "lstm2", "gru2", "simple2"])
def test_page_matches_the_command_line_and_the_numpy_engine(browser, runs, pages, greedy, name):
    page = open_page(browser, pages[name])
    try:
        assert page.evaluate("window.textgen.model.engine") == "wasm-simd"
        got = page.evaluate(
            "([prime, length]) => window.textgen.model.generate(prime, {length, temperature: 0})",
            [PRIME, LENGTH],
        )
        assert got == greedy[name]
        logits = page.evaluate(
            "(text) => window.textgen.model.logits(text).map((r) => Array.from(r))", TEXT
        )
        np.testing.assert_allclose(logits, numpy_logits(runs[name], TEXT), atol=1e-4, rtol=0)
        # And through the page's own controls.
        page.fill("#prime", PRIME)
        page.fill("#temperature", "0")
        page.fill("#length", str(LENGTH))
        page.click("#generate")
        page.wait_for_function("document.getElementById('status').textContent === 'done'")
        assert page.text_content("#output") == PRIME + greedy[name]
        assert_offline_and_clean(page, pages[name])
    finally:
        page.close()
