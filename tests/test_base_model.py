"""The model shipped inside the package, ``base``: usable with nothing trained, and a source."""

import json
import subprocess
import sys
import urllib.request
import zipfile
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import API_KEY, start_server, stop_server
from test_training import _quiet

from textgen import Sampler
from textgen.cli.commands import main
from textgen.run import SHIPPED, open_run, shipped_models
from textgen.training.train import train

BASE = SHIPPED / "base"


def test_base_is_shipped_compact_and_the_default_shape():
    assert "base" in shipped_models()
    size = sum(p.stat().st_size for p in BASE.iterdir())
    assert size < 8 * 2**20
    run = open_run("base")
    assert (run.config.model.num_layers, run.config.model.units) == (1, 512)
    assert run.config.model.cell == "lstm"
    assert all(w.dtype.name == "float32" for w in run.weights.values())  # stored as float16


def test_base_samples_and_describes_itself_from_any_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no run directory anywhere near
    result = CliRunner().invoke(
        main, ["sample", "--checkpoint", "base", "--prime", "The ", "--length", "80", "--seed", "1"]
    )
    assert result.exit_code == 0, result.output
    assert result.output.startswith("The ") and len(result.output) == 4 + 80 + 1
    info = CliRunner().invoke(main, ["info", "base"])
    assert info.exit_code == 0 and str(BASE) in info.output
    text = Sampler.from_checkpoint("base").generate(30, prime="The ", seed=1)
    assert len(text) == 30


def test_a_local_folder_named_like_a_shipped_model_wins(tmp_path, monkeypatch, trained_run):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "base").symlink_to(trained_run)
    assert open_run("base").config.model.units != 512


def test_serving_base(tmp_path):
    proc, url = start_server(Path("base"))
    try:
        body = json.dumps({"model": "base", "prompt": "The ", "max_tokens": 20, "seed": 1})
        request = urllib.request.Request(
            f"{url}/v1/completions",
            body.encode(),
            {"Content-Type": "application/json", "Authorization": f"Bearer {API_KEY}"},
        )
        with urllib.request.urlopen(request, timeout=30) as answer:
            completion = json.loads(answer.read())
        assert len(completion["choices"][0]["text"]) == 20
    finally:
        stop_server(proc)


def test_fine_tuning_from_base(tmp_path, corpus):
    corpus.write_text(corpus.read_text() + "Ünïcödé ✓\n", encoding="utf-8")
    train(corpus, run_dir=tmp_path / "tuned", init_from="base",
          **_quiet(epochs=1, batch_size=8, seq_length=16))  # fmt: skip
    run, base = open_run(tmp_path / "tuned"), open_run("base")
    assert run.tokenizer.chars[: len(base.tokenizer.chars)] == base.tokenizer.chars
    assert "✓" in run.tokenizer.chars
    assert run.config.init_from["source"] == "base" and run.config.init_from["shipped"]


@pytest.mark.skipif(sys.platform == "win32", reason="builds with the POSIX venv layout")
def test_the_wheel_carries_base(tmp_path):
    root = Path(__file__).resolve().parents[1]
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(root), "--no-deps", "--no-build-isolation",
         "-w", str(tmp_path), "-q"],
        check=True, timeout=300,
    )  # fmt: skip
    (wheel,) = tmp_path.glob("textgen-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for part in ("best.npz", "config.json", "tokenizer.json"):
        assert f"textgen/models/base/{part}" in names
