"""Exported models, each loaded in a Python process where ``import textgen`` fails.

Every artefact is compared with textgen itself: logits with the Keras model's on the same ids
(1e-5), and greedy text with ``Sampler.generate(..., temperature=0)``. Besides the trained tiny
LSTM, hand-made runs with larger random weights cover a 2-layer GRU, a 2-layer LSTM and a
SimpleRNN whose vocabulary has an unknown id (which greedy decoding must never pick).
"""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import make_text

from textgen.checkpoint import Checkpoint, save_checkpoint
from textgen.cli.commands import main
from textgen.errors import TextgenError
from textgen.export.formats import export_run, state_names
from textgen.run import BEST, CONFIG, TOKENIZER, open_run, read_config, write_config
from textgen.sample.sampler import Sampler
from textgen.tokenizer import Tokenizer

REPO = Path(__file__).resolve().parents[1]
PRIME = "the "  # docs/export.md's ONNX loop uses this prime and length
LENGTH = 200
TEXT = "the quick brown fox jumps over a lazy dog"

# Prepended to every isolated script: textgen must not be importable there, even though it is
# installed (editable) in this environment.
GUARD = f"""
import sys
sys.path = [p for p in sys.path if p.rstrip('/') != {str(REPO)!r}]
sys.modules["textgen"] = None
try:
    import textgen
except ImportError:
    pass
else:
    raise SystemExit("textgen is importable")
"""


def run_isolated(tmp_path: Path, code: str, *args: str, cwd: Path | None = None) -> str:
    """Run ``code`` in a fresh interpreter (``-I``) without textgen; return its stdout."""
    script = tmp_path / f"isolated_{abs(hash(code))}.py"
    script.write_text(GUARD + code, encoding="utf-8")
    proc = subprocess.run(
        [sys.executable, "-I", str(script), *map(str, args)],
        cwd=cwd or tmp_path,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def make_run(root: Path, like: Path, *, cell: str, layers: int, units: int, max_vocab=None):
    """A run directory in textgen's format, holding random weights of a given shape."""
    tokenizer = Tokenizer.from_text(make_text(), max_vocab=max_vocab)
    assert set(PRIME) <= set(tokenizer.chars)  # the docs' loop looks the prime up
    config = read_config(like)
    emb, vocab = 5, tokenizer.vocab_size
    config.model = dataclasses.replace(
        config.model, cell=cell, num_layers=layers, units=units, vocab_size=vocab, embedding_dim=emb
    )
    gates = {"lstm": 4, "gru": 3, "simple": 1}[cell]
    rng = np.random.default_rng(units)
    weights = {"embedding": rng.normal(0, 1, (vocab, emb))}
    for i in range(layers):
        weights[f"rnn_{i}/kernel"] = rng.normal(0, 1.2, (emb if i == 0 else units, gates * units))
        weights[f"rnn_{i}/recurrent_kernel"] = rng.normal(0, 1.2, (units, gates * units))
        shape = (2, 3 * units) if cell == "gru" else (gates * units,)
        weights[f"rnn_{i}/bias"] = rng.normal(0, 0.3, shape)
    weights["dense/kernel"] = rng.normal(0, 0.4, (units, vocab))  # logits of order 1
    weights["dense/bias"] = rng.normal(0, 0.3, vocab)
    if tokenizer.unknown:  # make the unknown id tempting, so that excluding it is tested
        weights["dense/bias"][tokenizer.unknown_id] += 1.5
    root.mkdir(parents=True)
    write_config(root, config)
    tokenizer.save(root / TOKENIZER)
    weights = {k: v.astype(np.float32) for k, v in weights.items()}
    save_checkpoint(root / BEST, Checkpoint(weights))
    return root


@pytest.fixture(scope="module")
def runs(trained_run, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("export_runs")
    return {
        "lstm": trained_run,
        "gru2": make_run(root / "gru2", trained_run, cell="gru", layers=2, units=6),
        "lstm2": make_run(root / "lstm2", trained_run, cell="lstm", layers=2, units=7),
        "simple_unk": make_run(
            root / "simple", trained_run, cell="simple", layers=1, units=9, max_vocab=20
        ),
    }


@pytest.fixture(scope="module")
def exported(runs, tmp_path_factory) -> dict[str, Path]:
    """Each run exported in every format into its own folder."""
    root = tmp_path_factory.mktemp("exported")
    for name, run in runs.items():
        export_run(run, root / name / "model.keras")
        export_run(run, root / name / "savedmodel", "savedmodel")
        export_run(run, root / name / "model.onnx")
    return {name: root / name for name in runs}


@pytest.fixture(scope="module")
def reference(runs) -> dict[str, dict]:
    """textgen's own logits for TEXT (batch of two) and greedy text, per run."""
    out = {}
    for name, run in runs.items():
        loaded = open_run(run)
        ids = loaded.tokenizer.encode(TEXT)
        batch = np.stack([ids, ids[::-1]]).astype(np.int32)
        model = loaded.build_model()
        greedy = Sampler.from_checkpoint(run).generate(LENGTH, temperature=0, prime=PRIME)
        out[name] = {"ids": batch, "logits": np.asarray(model(batch)), "greedy": PRIME + greedy}
    return out


def test_vocabulary_travels_with_every_artefact(runs, exported):
    for name, folder in exported.items():
        vocab = json.loads((runs[name] / TOKENIZER).read_text(encoding="utf-8"))
        assert json.loads((folder / "tokenizer.json").read_text(encoding="utf-8")) == vocab
        with zipfile.ZipFile(folder / "model.keras") as archive:
            assert json.loads(archive.read("tokenizer.json")) == vocab
        assets = folder / "savedmodel" / "assets" / "tokenizer.json"
        assert json.loads(assets.read_text(encoding="utf-8")) == vocab


# The Keras and SavedModel checks share one process, so TensorFlow is imported once.
KERAS_SCRIPT = """
import json
import os
import numpy as np
import keras
keras_result = {}
for name, (path, ids) in json.loads(sys.argv[1])["keras"].items():
    model = keras.saving.load_model(path)
    keras_result[name] = {
        "logits": np.asarray(model(np.array(ids, np.int32))).tolist(),
        "layers": [type(layer).__module__.split(".")[0] for layer in model.layers],
    }
    # Greedy text the plain Keras way: the whole text so far through the model at every step
    # (each new length costs Keras a retrace, so only for one run).
    if name != "lstm2":
        continue
    vocab = json.load(open(os.path.join(os.path.dirname(path), "tokenizer.json")))
    text = "the "
    for _ in range(20):
        ids = [[vocab["chars"].index(c) for c in text]]
        logits = np.array(model(np.array(ids, np.int32)))[0, -1]
        if vocab["unknown"]:
            logits[-1] = -np.inf
        text += vocab["chars"][int(logits.argmax())]
    keras_result[name]["greedy"] = text
"""


def test_keras_file_loads_without_textgen_and_matches_logits(tensorflow_side, reference):
    for name, got in tensorflow_side["keras"].items():
        assert set(got["layers"]) == {"keras"}, got["layers"]  # stock layers only
        np.testing.assert_allclose(got["logits"], reference[name]["logits"], atol=1e-5)
    greedy = tensorflow_side["keras"]["lstm2"]["greedy"]
    assert greedy == reference["lstm2"]["greedy"][: len(PRIME) + 20]


SAVEDMODEL_SCRIPT = """
import tensorflow as tf
result = {}
for name, (path, ids, prime, length) in json.loads(sys.argv[1])["savedmodel"].items():
    signatures = tf.saved_model.load(path).signatures
    ids = np.array(ids, np.int32)
    full = signatures["serving_default"](ids=tf.constant(ids))["logits"].numpy()
    step = signatures["step"]
    specs = step.structured_input_signature[1]
    names = sorted(n for n in specs if n != "ids")
    states = {n: tf.zeros([ids.shape[0], specs[n].shape[1]]) for n in names}
    stepped = []
    for column in ids.T:
        out = step(ids=tf.constant(np.ascontiguousarray(column)), **states)
        states = {n: out["new_" + n] for n in states}
        stepped.append(out["logits"].numpy())

    def generate(temperature, seed, prompt=prime, n=length):
        out = signatures["generate"](
            prompt=tf.constant(prompt), length=tf.constant(n, tf.int32),
            temperature=tf.constant(temperature, tf.float32), seed=tf.constant(seed, tf.int64),
        )
        return out["text"].numpy().decode("utf-8")

    result[name] = {
        "logits": full.tolist(),
        "stepped": np.stack(stepped, axis=1).tolist(),
        "state_names": names,
        "greedy": generate(0.0, 0),
        "seeded": [generate(0.8, 7), generate(0.8, 7), generate(0.8, 8)],
        "empty_prompt": generate(1.0, 3, prompt="", n=12),
    }
    try:
        generate(0.0, 0, prompt="\\x01")
        result[name]["unknown_prompt"] = "accepted"
    except tf.errors.InvalidArgumentError as err:
        result[name]["unknown_prompt"] = err.message
print(json.dumps({"keras": keras_result, "savedmodel": result}))
"""


@pytest.fixture(scope="module")
def tensorflow_side(exported, reference, tmp_path_factory) -> dict:
    """The Keras files and SavedModels, run by TensorFlow in a process without textgen."""
    cases = {
        "keras": {
            name: (str(folder / "model.keras"), reference[name]["ids"].tolist())
            for name, folder in exported.items()
        },
        "savedmodel": {
            name: (str(folder / "savedmodel"), reference[name]["ids"].tolist(), PRIME, LENGTH)
            for name, folder in exported.items()
        },
    }
    tmp = tmp_path_factory.mktemp("tensorflow_side")
    return json.loads(run_isolated(tmp, KERAS_SCRIPT + SAVEDMODEL_SCRIPT, json.dumps(cases)))


def test_savedmodel_without_textgen_matches_logits_and_greedy_text(
    tensorflow_side, exported, reference, runs
):
    from textgen.backend import tf

    result = tensorflow_side["savedmodel"]
    for name, got in result.items():
        want = reference[name]
        np.testing.assert_allclose(got["logits"], want["logits"], atol=1e-5)
        np.testing.assert_allclose(got["stepped"], want["logits"], atol=1e-5)
        model = read_config(runs[name]).model
        assert sorted(got["state_names"]) == sorted(state_names(model.cell, model.num_layers))
        assert got["greedy"] == want["greedy"]
        first, again, other = got["seeded"]
        assert first == again and first != other
        assert first.startswith(PRIME) and len(first) == len(PRIME) + LENGTH
        assert len(got["empty_prompt"]) == 12
        unknown = json.loads((runs[name] / TOKENIZER).read_text())["unknown"]
        if unknown:
            assert got["unknown_prompt"] == "accepted"
        else:
            assert "outside the vocabulary" in got["unknown_prompt"]

    # The same seed in this process gives the text the other process produced.
    generate = tf.saved_model.load(str(exported["lstm2"] / "savedmodel")).signatures["generate"]
    here = generate(
        prompt=tf.constant(PRIME),
        length=tf.constant(LENGTH),
        temperature=tf.constant(0.8),
        seed=tf.constant(7, tf.int64),
    )["text"].numpy()
    assert here.decode("utf-8") == result["lstm2"]["seeded"][0]


def test_savedmodel_greedy_text_equals_textgen_sample_command(runs, exported):
    from textgen.backend import tf

    result = CliRunner().invoke(
        main,
        ["sample", "--checkpoint", str(runs["gru2"]), "--temperature", "0"]
        + ["--prime", PRIME, "--length", "80"],
    )
    assert result.exit_code == 0, result.output
    generate = tf.saved_model.load(str(exported["gru2"] / "savedmodel")).signatures["generate"]
    text = generate(
        prompt=tf.constant(PRIME),
        length=tf.constant(80),
        temperature=tf.constant(0.0),
        seed=tf.constant(0, tf.int64),
    )["text"].numpy()
    assert result.output == text.decode("utf-8") + "\n"


ONNX_SCRIPT = """
import json
import numpy as np
import onnx
import onnxruntime as ort
cases = json.loads(sys.argv[1])
result = {}
for name, (path, ids) in cases.items():
    session = ort.InferenceSession(path)
    ids = np.array(ids, np.int64)
    inputs = [(i.name, i.type, i.shape) for i in session.get_inputs()]
    outputs = [o.name for o in session.get_outputs()]
    state = {n: np.zeros((ids.shape[0], s[1]), np.float32) for n, _, s in inputs[1:]}
    logits = []
    for column in ids.T:
        out, *new = session.run(None, {"ids": np.ascontiguousarray(column), **state})
        state = dict(zip(state, new))
        logits.append(out)
    props = {p.key: p.value for p in onnx.load(path).metadata_props}
    result[name] = {
        "inputs": inputs, "outputs": outputs, "logits": np.stack(logits, axis=1).tolist(),
        "tokenizer": json.loads(props["tokenizer"]),
    }
print(json.dumps(result))
"""


def test_onnx_without_textgen_matches_logits(exported, reference, runs, tmp_path):
    cases = {
        name: (str(folder / "model.onnx"), reference[name]["ids"].tolist())
        for name, folder in exported.items()
    }
    result = json.loads(run_isolated(tmp_path, ONNX_SCRIPT, json.dumps(cases)))
    for name, got in result.items():
        model = read_config(runs[name]).model
        names = state_names(model.cell, model.num_layers)
        assert [n for n, _, _ in got["inputs"]] == ["ids", *names]
        assert got["inputs"][0][1] == "tensor(int64)"
        assert all(t == "tensor(float)" and s[1] == model.units for _, t, s in got["inputs"][1:])
        assert got["outputs"] == ["logits", *(f"new_{n}" for n in names)]
        np.testing.assert_allclose(got["logits"], reference[name]["logits"], atol=1e-5)
        vocab = json.loads((runs[name] / TOKENIZER).read_text(encoding="utf-8"))
        assert got["tokenizer"] == vocab


def docs_onnx_loop() -> str:
    page = (REPO / "docs" / "export.md").read_text(encoding="utf-8")
    section = page.split("## ONNX", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_docs_onnx_loop_prints_textgen_greedy_text(exported, reference, tmp_path):
    code = docs_onnx_loop()
    assert len(code.strip().splitlines()) < 20
    for name, folder in exported.items():
        printed = run_isolated(tmp_path, code, cwd=folder)
        assert printed == reference[name]["greedy"] + "\n", name


def test_onnx_export_needs_no_tensorflow(trained_run, tmp_path):
    code = (
        "import sys\n"
        "from textgen.export.formats import export_run\n"
        f"export_run({str(trained_run)!r}, {str(tmp_path / 'm.onnx')!r})\n"
        "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules\n"
        "from click.testing import CliRunner\n"
        "from textgen.cli.commands import main\n"
        "assert CliRunner().invoke(main, ['export', '--help']).exit_code == 0\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
    assert (tmp_path / "m.onnx").stat().st_size > 0


# -- the command ---------------------------------------------------------------------------------


def export_cli(*args):
    return CliRunner().invoke(main, ["export", *map(str, args)])


def assert_one_line_error(result, fragment):
    assert result.exit_code != 0
    assert result.exception is None or isinstance(result.exception, SystemExit)
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and fragment in lines[0], result.output


def test_export_command_writes_and_refuses_to_overwrite(trained_run, tmp_path):
    out = tmp_path / "out" / "model.onnx"
    result = export_cli(trained_run, out)
    assert result.exit_code == 0, result.output
    assert str(out) in result.output and (tmp_path / "out" / "tokenizer.json").is_file()
    before = out.read_bytes()

    assert_one_line_error(export_cli(trained_run, out), "already exists")
    assert out.read_bytes() == before
    result = export_cli(trained_run, out, "--force", "--which", "latest")
    assert result.exit_code == 0, result.output
    assert not list(out.parent.glob(".*.tmp"))  # nothing left behind


def test_export_command_replaces_a_savedmodel_with_force(runs, tmp_path):
    out = tmp_path / "sm"
    assert export_cli(runs["simple_unk"], out, "--format", "savedmodel").exit_code == 0
    (out / "stale.txt").write_text("old")
    result = export_cli(runs["simple_unk"], out, "--format", "savedmodel", "--force")
    assert result.exit_code == 0, result.output
    assert (out / "saved_model.pb").is_file() and not (out / "stale.txt").exists()

    keep = tmp_path / "not_a_model"
    keep.mkdir()
    (keep / "notes.txt").write_text("mine")
    result = export_cli(runs["simple_unk"], keep, "--format", "savedmodel", "--force")
    assert_one_line_error(result, "not a SavedModel")
    assert (keep / "notes.txt").read_text() == "mine"


def test_export_command_errors(trained_run, runs, tmp_path):
    assert_one_line_error(
        export_cli(trained_run, tmp_path / "m", "--format", "tflite"), "unknown format"
    )
    assert_one_line_error(export_cli(trained_run, tmp_path / "m"), "--format")
    assert_one_line_error(export_cli(trained_run, tmp_path / "m.h5", "--format", "keras"), ".keras")
    assert_one_line_error(export_cli(tmp_path / "missing", tmp_path / "m.onnx"), "no such run")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / CONFIG).write_text((trained_run / CONFIG).read_text())
    (broken / TOKENIZER).write_text((runs["simple_unk"] / TOKENIZER).read_text())
    (broken / BEST).write_bytes((trained_run / BEST).read_bytes())
    assert_one_line_error(export_cli(broken, tmp_path / "m.onnx"), "the tokenizer has")
    (broken / BEST).write_bytes(b"not a checkpoint")
    assert_one_line_error(export_cli(broken, tmp_path / "m.onnx"), "damaged")
    assert not (tmp_path / "m.onnx").exists()


def test_a_different_vocabulary_beside_the_output_is_kept_without_force(runs, tmp_path):
    export_run(runs["lstm"], tmp_path / "a.onnx")
    vocab = (tmp_path / "tokenizer.json").read_text()
    with pytest.raises(TextgenError, match="another vocabulary"):
        export_run(runs["simple_unk"], tmp_path / "b.onnx")
    assert (tmp_path / "tokenizer.json").read_text() == vocab
    assert not (tmp_path / "b.onnx").exists()
    export_run(runs["simple_unk"], tmp_path / "b.onnx", force=True)
    assert (tmp_path / "tokenizer.json").read_text() != vocab


def test_a_cell_without_equations_is_refused_not_exported_as_another(monkeypatch, tmp_path):
    from textgen import cells
    from textgen.config import ModelConfig, RunConfig, TrainConfig
    from textgen.export.formats import _build_module, onnx_model
    from textgen.export.web import model_data
    from textgen.run import Run
    from textgen.sample.engine import RecurrentStack
    from textgen.weights import weight_shapes

    # A cell shaped like SimpleRNN that no backend has equations for.
    monkeypatch.setitem(cells.CELLS, "fake", cells.Cell("fake", "SimpleRNN", "SimpleRNNCell", 1))
    tokenizer = Tokenizer.from_text("abc")
    shape = ModelConfig(tokenizer.vocab_size, 2, 3, cell="fake")
    weights = {k: np.zeros(s, np.float32) for k, s in weight_shapes(shape).items()}
    run = Run(tmp_path, RunConfig(shape, TrainConfig()), tokenizer, Checkpoint(weights), "best")
    with pytest.raises(TextgenError, match="the ONNX export cannot step the fake cell"):
        onnx_model(run)
    with pytest.raises(TextgenError, match="the SavedModel export cannot step the fake cell"):
        _build_module(None, run)  # refused before TensorFlow is touched
    with pytest.raises(TextgenError, match="the web export cannot step the fake cell"):
        model_data(run)
    with pytest.raises(TextgenError, match="the numpy engine cannot step the fake cell"):
        RecurrentStack(weights, shape)
