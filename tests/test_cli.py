import json
import shutil
import subprocess
import sys

import pytest
from click.testing import CliRunner
from conftest import TINY, make_text

from textgen.cli.commands import main

TRAIN_ARGS = [
    "--epochs", "1", "--batch-size", str(TINY["batch_size"]), "--seq-length",
    str(TINY["seq_length"]), "--embedding-dim", "4", "--units", "8", "--quiet",
]  # fmt: skip


def run(*args, **kw):
    result = CliRunner().invoke(main, [str(a) for a in args], **kw)
    return result


def assert_clean_error(result, *fragments):
    """A user mistake: non-zero exit, a one-line message naming the problem, no traceback."""
    assert result.exit_code != 0, result.output
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    message = [line for line in result.output.splitlines() if line.strip()]
    assert any(all(f in line for f in fragments) for line in message), result.output


def test_help_is_instant_and_does_not_import_tensorflow():
    code = (
        "import sys\n"
        "from click.testing import CliRunner\n"
        "from textgen.cli.commands import main\n"
        "for args in (['--help'], ['train', '--help'], ['sample', '--help']):\n"
        "    assert CliRunner().invoke(main, args).exit_code == 0\n"
        "assert 'tensorflow' not in sys.modules, 'tensorflow was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
    out = run("train", "--help").output
    for option in ("--epochs", "--seq-length", "--max-time", "--resume", "--checkpoint-dir"):
        assert option in out


def test_train_sample_info_eval(tmp_path, corpus):
    run_dir = tmp_path / "run"
    result = run("train", corpus, "--checkpoint-dir", run_dir, *TRAIN_ARGS)
    assert result.exit_code == 0, result.output
    assert "epoch 1:" in result.output and "bpc" in result.output
    from textgen.training.step_plan import plan_for_this_machine

    # The last line says how the step ran on this machine, as the plan chose it.
    assert f"({plan_for_this_machine('auto')}); best loss" in result.output.splitlines()[-1]
    result = run("sample", "--checkpoint", run_dir, "--length", 30, "--seed", 1, "--prime", "The")
    assert result.exit_code == 0, result.output
    assert result.output.startswith("The") and len(result.output) == 3 + 30 + 1
    again = run("sample", "--checkpoint", run_dir, "--length", 30, "--seed", 1, "--prime", "The")
    assert again.output == result.output
    jsonl = run("sample", "--checkpoint", run_dir, "--length", 10, "--num-samples", 3,
                "--format", "jsonl", "--seed", 2)  # fmt: skip
    rows = [json.loads(line) for line in jsonl.output.splitlines()]
    assert [r["sample"] for r in rows] == [0, 1, 2] and all(len(r["text"]) == 10 for r in rows)
    info = run("info", run_dir)
    assert info.exit_code == 0 and "vocabulary" in info.output and "rnn_0" in info.output
    evaluated = run("eval", run_dir, corpus)
    assert evaluated.exit_code == 0, evaluated.output
    assert set(json.loads(evaluated.output)) == {"loss_nats", "bpc"}


def test_sample_defaults_to_the_newest_run(tmp_path, trained_run, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert_clean_error(run("sample", "--length", 5), "no trained runs")
    shutil.copytree(trained_run, tmp_path / "checkpoints" / "mine")
    result = run("sample", "--length", 12, "--seed", 0)
    assert result.exit_code == 0 and len(result.output) == 13


def test_output_file_is_written(tmp_path, trained_run):
    out = tmp_path / "samples.txt"
    result = run("sample", "--checkpoint", trained_run, "--length", 20, "--output", out)
    assert result.exit_code == 0 and len(out.read_text()) == 21


@pytest.mark.parametrize(
    "content, fragments",
    [
        (None, ("no such file",)),
        (b"", ("empty",)),
        (b"   \n\n\t ", ("empty",)),
        (b"\x7fELF\x00\x00\x00binary stuff", ("binary",)),
        (b"caf\xe9 cr\xe8me br\xfbl\xe9e " * 20, ("offset 3",)),
        (b"short text", ("shorter than one window",)),
        (b"zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz", ("one distinct",)),
    ],
)
def test_bad_corpora(tmp_path, content, fragments):
    path = tmp_path / "corpus.txt"
    if content is not None:
        path.write_bytes(content)
    result = run("train", path, "--checkpoint-dir", tmp_path / "run", *TRAIN_ARGS)
    assert_clean_error(result, *fragments)
    assert not (tmp_path / "run").exists()  # no empty run, lock files included, is left behind


def test_bad_sampling_options(trained_run):
    ck = ("--checkpoint", trained_run)
    assert_clean_error(run("sample", *ck, "--temperature", "-1"), "temperature")
    assert_clean_error(run("sample", *ck, "--temperature", "nan"), "temperature")
    assert_clean_error(run("sample", *ck, "--length", "-5"), "--length")
    assert_clean_error(run("sample", *ck, "--top-k", "0"), "top-k")
    assert_clean_error(run("sample", *ck, "--top-p", "1.5"), "top-p")
    assert_clean_error(run("sample", *ck, "--num-samples", "0"), "num-samples")
    unknown = run("sample", *ck, "--prime", "Quack€")
    assert_clean_error(unknown, "'€'")
    assert "Quack" not in unknown.output  # the error comes before any of the sample is printed
    ok = run("sample", *ck, "--prime", "Quack€", "--drop-unknown", "--length", 5)
    assert ok.exit_code == 0 and ok.output.startswith("Quack")


def test_bad_checkpoints(tmp_path, trained_run):
    assert_clean_error(run("sample", "--checkpoint", tmp_path / "nope"), "no such run")
    assert_clean_error(run("sample", "--checkpoint", tmp_path), "not a run directory")
    damaged = tmp_path / "damaged"
    shutil.copytree(trained_run, damaged)
    data = (damaged / "best.npz").read_bytes()
    (damaged / "best.npz").write_bytes(data[:100])
    assert_clean_error(run("sample", "--checkpoint", damaged), "damaged")
    assert_clean_error(run("info", tmp_path / "nope"), "no such run")


def test_resume_with_an_incompatible_config(tmp_path, corpus):
    run_dir = tmp_path / "run"
    assert run("train", corpus, "--checkpoint-dir", run_dir, *TRAIN_ARGS).exit_code == 0
    before = (run_dir / "latest.npz").read_bytes()
    result = run("train", corpus, "--checkpoint-dir", run_dir, "--resume", "--units", "16")
    assert_clean_error(result, "units")
    again = run("train", corpus, "--checkpoint-dir", run_dir, *TRAIN_ARGS)
    assert_clean_error(again, "already holds a run")
    assert (run_dir / "latest.npz").read_bytes() == before
    resumed = run("train", "--checkpoint-dir", run_dir, "--resume", "--epochs", "2", "--quiet")
    assert resumed.exit_code == 0, resumed.output
    assert "epoch 2:" in resumed.output


def test_unwritable_checkpoint_dir(tmp_path, corpus):
    blocker = tmp_path / "file"
    blocker.write_text(make_text())
    result = run("train", corpus, "--checkpoint-dir", blocker / "run", *TRAIN_ARGS)
    assert_clean_error(result, "cannot write")


def test_usage_errors():
    assert_clean_error(run("train", "--max-time", "soon"), "duration")
    assert_clean_error(run("train", "--epochs", "0"), "--epochs")
    assert_clean_error(run("train", "--cell", "transformer"), "--cell")


def test_beam_width_and_best_of(trained_run):
    from textgen.sample.sampler import Sampler

    sampler = Sampler.from_checkpoint(trained_run)
    ck = ("--checkpoint", trained_run, "--prime", "The ", "--length", 40)
    beam = run("sample", *ck, "--beam-width", 3, "--stop", "\n")
    assert beam.exit_code == 0, beam.output
    assert beam.output == "The " + sampler.beam_search("The ", 40, 3, stop="\n").text + "\n"
    best = run("sample", *ck, "--best-of", 6, "--num-samples", 2, "--seed", 4, "--format", "jsonl")
    assert best.exit_code == 0, best.output
    want = sampler.generate_batch(2, 40, prime="The ", seed=4, best_of=6)
    assert [json.loads(line)["text"] for line in best.output.splitlines()] == want


@pytest.mark.parametrize(
    "args, fragments",
    [
        (("--beam-width", 2, "--temperature", 0.5), ("--beam-width", "--temperature")),
        (("--beam-width", 2, "--top-k", 3), ("--beam-width", "--top-k")),
        (("--beam-width", 2, "--top-p", 0.5), ("--beam-width", "--top-p")),
        (("--beam-width", 2, "--seed", 1), ("--beam-width", "--seed")),
        (("--beam-width", 2, "--num-samples", 2), ("--beam-width", "--num-samples")),
        (("--beam-width", 2, "--best-of", 2), ("--beam-width", "--best-of")),
        (("--beam-width", 2, "--length", 0), ("--beam-width", "--length")),
        (("--best-of", 2, "--length", 0), ("--best-of", "--length")),
        (("--best-of", 2, "--num-samples", 3), ("--best-of", "--num-samples")),
        (("--beam-width", 0), ("--beam-width",)),
        (("--best-of", 0), ("--best-of",)),
        (("--best-of", 5000), ("--best-of",)),
    ],
)
def test_search_options_that_do_not_combine(trained_run, args, fragments):
    result = run("sample", "--checkpoint", trained_run, *args)
    assert result.exit_code == 2
    assert_clean_error(result, *fragments)


def test_info_prints_the_whole_summary_and_readable_config_into_a_pipe(trained_run):
    from textgen.run import open_run

    result = run("info", trained_run)  # CliRunner's output is not a terminal, like `| cat`
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert "model:" in lines and "training:" in lines and "corpus:" in lines
    assert f"  units: {TINY['units']}" in lines
    assert "Param #" in result.output
    params = open_run(trained_run).build_model().get_layer("rnn_0").count_params()
    assert any("rnn_0 (LSTM)" in line and f"{params:,}" in line for line in lines)
    as_json = run("info", trained_run, "--json")
    assert as_json.exit_code == 0, as_json.output
    assert json.loads(as_json.output) == json.loads((trained_run / "config.json").read_text())
