"""``textgen inspect``: the engine's numbers against Keras, the features, the ranking, the CLI."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from textgen.cli.commands import main
from textgen.config import ModelConfig
from textgen.errors import TextgenError
from textgen.sample.inspection import (
    BUILTIN_FEATURES,
    CellRanking,
    Inspector,
    inspect_text,
    parse_feature,
)
from textgen.tokenizer import Tokenizer
from textgen.weights import rnn_name, weight_shapes

TEXT = 'def f(x):\n    return "a" + [x, (1)]\n\n"q" (b)\n  x\n' * 3


def random_weights(cell: str, tokenizer: Tokenizer, layers: int, units: int = 6, seed: int = 0):
    config = ModelConfig(tokenizer.vocab_size, 5, units, layers, cell)
    rng = np.random.default_rng(seed)
    return {name: rng.normal(0, 0.5, shape).astype(np.float32) for name, shape in
            weight_shapes(config).items()}  # fmt: skip


def keras_states(weights, cell: str, ids: np.ndarray, layers: int):
    """Per layer: h of every step (return_sequences) and the last step's states
    (return_state), from Keras's own layers; and the logits of the top layer."""
    from textgen.cells import get_cell

    layer_class = get_cell(cell).layer_class()
    x = weights["embedding"][ids][None]  # (1, T, embedding)
    out = []
    for i in range(layers):
        name = rnn_name(i)
        layer = layer_class(
            weights[f"{name}/recurrent_kernel"].shape[0], return_sequences=True, return_state=True
        )
        layer.build(x.shape)
        layer.set_weights([weights[f"{name}/{p}"] for p in ("kernel", "recurrent_kernel", "bias")])
        seq, *last = layer(x)
        x = np.asarray(seq)
        out.append((x[0], [np.asarray(s)[0] for s in last]))
    logits = x[0] @ weights["dense/kernel"] + weights["dense/bias"]
    return out, logits


@pytest.mark.parametrize(("cell", "layers"), [("lstm", 1), ("lstm", 2), ("gru", 2), ("simple", 2)])
def test_probabilities_and_states_match_keras(cell, layers):
    tokenizer = Tokenizer.from_text(TEXT)
    weights = random_weights(cell, tokenizer, layers)
    ids = tokenizer.encode(TEXT)
    per_layer, logits = keras_states(weights, cell, ids, layers)
    z = logits - logits.max(axis=1, keepdims=True)
    softmax = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)  # row t: the guess for t + 1
    inspector = Inspector(weights, tokenizer, cell)
    for layer in range(layers):
        # Blocks of 7 make the guesses and states cross block boundaries.
        blocks = list(inspector.blocks(ids, layer, block_size=7))
        assert [b.start for b in blocks] == list(range(0, len(ids), 7))
        prob = np.concatenate([b.prob for b in blocks])
        h = np.concatenate([b.h for b in blocks])
        assert np.isnan(prob[0]) and (blocks[0].top_ids[0] == -1).all()
        np.testing.assert_allclose(prob[1:], softmax[np.arange(len(ids) - 1), ids[1:]], atol=1e-5)
        top_ids = np.concatenate([b.top_ids for b in blocks])[1:]
        top_probs = np.concatenate([b.top_probs for b in blocks])[1:]
        np.testing.assert_allclose(top_probs, -np.sort(-softmax[:-1], axis=1)[:, :5], atol=1e-5)
        np.testing.assert_allclose(
            np.take_along_axis(softmax[:-1], top_ids, 1), top_probs, atol=1e-5
        )
        keras_h, last = per_layer[layer]
        np.testing.assert_allclose(h, keras_h, atol=1e-5)
        np.testing.assert_allclose(h[-1], last[0], atol=1e-5)
        if cell == "lstm":
            c = np.concatenate([b.c for b in blocks])
            np.testing.assert_allclose(c[-1], last[1], atol=1e-5)
            # The cell state part way through too: Keras's final state on a prefix.
            prefix, _ = keras_states(weights, cell, ids[:20], layers)
            np.testing.assert_allclose(c[19], prefix[layer][1][1], atol=1e-5)
        else:
            assert all(b.c is None for b in blocks)


def test_the_top_layer_is_the_default_and_others_are_refused():
    tokenizer = Tokenizer.from_text(TEXT)
    inspector = Inspector(random_weights("gru", tokenizer, 2), tokenizer, "gru")
    assert inspect_text(inspector, TEXT).layer == 1
    for bad in (2, -1):
        with pytest.raises(TextgenError, match=r"--layer must lie in 0\.\.1"):
            inspect_text(inspector, TEXT, layer=bad)


def test_builtin_features_on_a_known_text():
    text = 'a "b(c)" [d\n  e"\n\tf)'
    values = {f.name: f.values(text).tolist() for f in BUILTIN_FEATURES}
    #                      a     "  b  (  c  )  "     [  d  \n       e  "  \n \t f  )
    assert values["quotes"] == [0, 0, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1]
    assert values["brackets"] == [0, 0, 0, 0, 1, 1, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0]
    assert values["line position"] == [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 0, 1, 2, 3, 4, 0, 1, 2, 3]
    assert values["indentation"] == [0] * 12 + [1, 2, 2, 2, 0, 1, 1, 1]
    assert values["word"] == [1, 0, 0, 1, 0, 1, 0, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 1, 0]
    # A stray closer does not push the depth below zero.
    brackets = BUILTIN_FEATURES[1].values(")) (x")
    assert brackets.tolist() == [0, 0, 0, 1, 1]


def test_a_users_feature_is_a_regex_and_mistakes_are_one_line():
    feature = parse_feature("digits=[0-9]+")
    assert feature.name == "digits" and feature.pattern == "[0-9]+"
    assert feature.values("a12b3").tolist() == [0, 1, 1, 0, 1]
    assert parse_feature("eq=a=b").values("xa=b").tolist() == [0, 1, 1, 1]
    for bad in ("no-equals", "=x", "name=", " =x"):
        with pytest.raises(TextgenError, match="NAME=REGEX"):
            parse_feature(bad)
    with pytest.raises(TextgenError, match="bad regular expression"):
        parse_feature("x=(")


def test_ranking_blocks_equal_one_correlation_over_the_text():
    rng = np.random.default_rng(3)
    rows = 2500
    features = np.stack([rng.integers(0, 2, rows), rng.integers(0, 80, rows)], axis=1)
    # Large offsets and scales test the block-wise merge against cancellation.
    cells = rng.normal(size=(rows, 6)) * [1, 1, 1, 100, 0.01, 1] + [0, 0, 0, 1e4, 50, 0]
    cells[:, 0] += 0.8 * features[:, 0]
    cells[:, 5] = 1.0  # a flat cell has no correlation
    ranking = CellRanking(2, 6)
    for start in range(0, rows, 333):
        ranking.update(features[start : start + 333], cells[start : start + 333])
    got = ranking.correlations()
    expected = np.corrcoef(features.T, cells[:, :5].T)[:2, 2:]
    np.testing.assert_allclose(got[:, :5], expected, atol=1e-9)
    assert np.isnan(got[:, 5]).all()


def test_unknown_characters_fail_or_are_dropped():
    tokenizer = Tokenizer.from_text("ab cd\n")
    inspector = Inspector(random_weights("lstm", tokenizer, 1), tokenizer, "lstm")
    with pytest.raises(TextgenError, match=r"'é'.*--drop-unknown"):
        inspect_text(inspector, "abé cd")
    found = inspect_text(inspector, "abé cd", drop_unknown=True)
    assert found.text == "ab cd"
    with pytest.raises(TextgenError, match="empty"):
        inspect_text(inspector, "")
    with pytest.raises(TextgenError, match="none of the text"):
        inspect_text(inspector, "ééé", drop_unknown=True)
    # One character: no guess for it and nothing to correlate, but no failure.
    single = inspect_text(inspector, "a")
    assert all(r.best == [] and r.note.startswith("nothing ranked") for r in single.rankings)


def test_a_feature_never_inside_is_reported_not_ranked():
    tokenizer = Tokenizer.from_text(TEXT)
    inspector = Inspector(random_weights("lstm", tokenizer, 1), tokenizer, "lstm")
    found = inspect_text(inspector, TEXT, features=[parse_feature("zeds=z")])
    assert found.rankings[0].best == []
    assert found.rankings[0].note == "nothing ranked: no character of the text is inside"


# -- a model trained so that the answer is known ---------------------------------------------------
def quoted_text(length: int, seed: int) -> str:
    """Words of a..e; between double quotes at random places they are upper case, so a model
    predicts the case of a word's first letter only if it remembers whether a quote is open."""
    rng = random.Random(seed)
    out, inside, size = [], False, 0
    while size < length:
        for _ in range(rng.randint(1, 4) if inside else rng.randint(2, 8)):
            word = "".join(rng.choice("abcde") for _ in range(rng.randint(1, 5)))
            out += [word.upper() if inside else word, " "]
        out[-1] = '" ' if inside else ' "'
        inside = not inside
        size = sum(map(len, out))
    return "".join(out)


@pytest.fixture(scope="module")
def quotes_run(tmp_path_factory) -> Path:
    from textgen.training.train import train

    root = tmp_path_factory.mktemp("quotes")
    (root / "corpus.txt").write_text(quoted_text(20000, seed=0), encoding="utf-8")
    train(
        root / "corpus.txt", run_dir=root / "run", progress=False, echo=lambda _: None,
        epochs=3, batch_size=16, seq_length=50, embedding_dim=4, units=8, dropout=0.0,
        validation_split=0.1, learning_rate=0.02, weight_decay=0.0, seed=0, sample_every=0,
        tensorboard=False, checkpoint_every=3600.0,
    )  # fmt: skip
    return root / "run"


def test_a_cell_that_tracks_quotes_is_found(quotes_run, tmp_path):
    text = quoted_text(3000, seed=7)  # text the model never saw
    (tmp_path / "text.txt").write_text(text, encoding="utf-8")
    out = tmp_path / "report.jsonl"
    result = CliRunner().invoke(
        main, ["inspect", str(quotes_run), str(tmp_path / "text.txt"), "--format", "jsonl",
               "-o", str(out)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    chars = lines[1:-1]
    assert "".join(r["char"] for r in chars) == text
    quotes = next(f for f in lines[-1]["features"] if f["name"] == "quotes")
    best = quotes["best"][0]
    assert abs(best["score"]) > 0.8, quotes
    # The same score, computed here: the parity of the quotes read so far, and numpy's r.
    inside, seen = [], 0
    for ch in text:
        seen += ch == '"'
        inside.append(seen % 2)
    activation = np.array([r[best["state"]][best["cell"]] for r in chars])
    assert best["score"] == pytest.approx(np.corrcoef(inside, activation)[0, 1], abs=1e-5)
    # And the cell really tracks them: split at its midpoint, it tells inside from outside.
    signed = activation * np.sign(best["score"])
    guess = signed > (signed.max() + signed.min()) / 2
    assert np.mean(guess == np.array(inside, bool)) > 0.9
    # No cell follows quotes as closely as this one in the ranking.
    assert all(abs(c["score"]) <= abs(best["score"]) for c in quotes["best"])


# -- the command line ------------------------------------------------------------------------------
def test_jsonl_lines_are_documented_fields(trained_run, tmp_path):
    text = "The quick fox.\nA lazy dog"
    out = tmp_path / "out.jsonl"
    result = CliRunner().invoke(
        main, ["inspect", str(trained_run), "--text", text, "--format", "jsonl", "-o", str(out),
               "--feature", "caps=[A-Z]", "--best", "3"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    header, chars, summary = lines[0], lines[1:-1], lines[-1]
    inspector = Inspector.from_run(trained_run)
    assert header == {
        "record": "header", "model": trained_run.name, "cell": "lstm", "layer": 0, "layers": 1,
        "units": inspector.units, "states": ["h", "c"], "characters": len(text),
    }  # fmt: skip
    assert [r["index"] for r in chars] == list(range(len(text)))
    assert "".join(r["char"] for r in chars) == text
    assert chars[0]["prob"] is None and chars[0]["top"] == [] and chars[0]["surprise"] is None
    (block,) = inspector.blocks(inspector.tokenizer.encode(text))
    for t, record in enumerate(chars):
        assert record["id"] == block.ids[t]
        assert set(record) == {"record", "index", "char", "id", "prob", "surprise", "top", "h", "c"}
        np.testing.assert_allclose(record["h"], block.h[t], atol=1e-5)
        np.testing.assert_allclose(record["c"], block.c[t], atol=1e-5)
        if t:
            assert record["prob"] == pytest.approx(block.prob[t], abs=1e-6)
            assert record["surprise"] == pytest.approx(-np.log(block.prob[t]), abs=1e-5)
            assert len(record["top"]) == 5
            for (ch, p), i, q in zip(record["top"], block.top_ids[t], block.top_probs[t]):
                assert ch == inspector.tokenizer.chars[i] and p == pytest.approx(q, abs=1e-6)
    assert summary["record"] == "features"
    names = [f["name"] for f in summary["features"]]
    assert names == [f.name for f in BUILTIN_FEATURES] + ["caps"]
    caps = summary["features"][-1]
    assert caps["inside"] == 2 and caps["pattern"] == "[A-Z]" and len(caps["best"]) == 3
    probs = np.array([r["prob"] for r in chars[1:]])
    assert summary["mean_surprise"] == pytest.approx(-np.log(probs).mean(), abs=1e-5)


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["--text", "abc", "--layer", "1"], 1, "--layer must lie in 0..0"),
        (["--text", ""], 1, "the text is empty"),
        (["--text", "a☃"], 1, "not in the vocabulary: '☃'"),
        (["--text", "abc", "--feature", "x=["], 1, "bad regular expression"),
        (["--text", "abc", "--feature", "nothing"], 1, "NAME=REGEX"),
        ([], 2, "one of the two"),
        (["--text", "abc", "FILE"], 2, "one of the two"),
        (["--text", "abc", "--format", "pdf"], 2, "'pdf' is not one of"),
        (["BADFILE"], 1, "is not valid utf-8: bad byte at offset 2"),
    ],
)
def test_mistakes_are_one_line_and_keep_the_old_report(trained_run, tmp_path, args, code, message):
    out = tmp_path / "report.html"
    out.write_text("the old report", encoding="utf-8")
    files = {"FILE": tmp_path / "in.txt", "BADFILE": tmp_path / "bad.txt"}
    files["FILE"].write_text("abc", encoding="utf-8")
    files["BADFILE"].write_bytes(b"ab\xffc")
    args = [str(files.get(a, a)) for a in args]
    result = CliRunner().invoke(main, ["inspect", str(trained_run), *args, "-o", str(out)])
    assert result.exit_code == code
    assert message in result.output and "Traceback" not in result.output
    assert out.read_text(encoding="utf-8") == "the old report"


def test_drop_unknown_and_stdin(trained_run, tmp_path):
    result = CliRunner().invoke(
        main, ["inspect", str(trained_run), "-", "--drop-unknown", "--format", "jsonl"],
        input="The☃ fox",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.output.splitlines()]
    assert "".join(r["char"] for r in lines[1:-1]) == "The fox"


def test_inspect_needs_no_tensorflow(trained_run):
    import subprocess
    import sys

    code = (
        "import sys\nfrom textgen.cli.commands import main\n"
        f"main(['inspect', {str(trained_run)!r}, '--text', 'The fox', '-o', '/dev/null'], "
        "standalone_mode=False)\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras')))\n"
    )
    env = {"PYTHONPATH": str(Path(__file__).resolve().parents[1]), "PATH": "/usr/bin:/bin"}
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_the_reports_json_in_pieces_is_the_same_data(monkeypatch):
    import textgen.sample.inspect_report as report

    text = "<b>x</b> </script> " * 5
    tokenizer = Tokenizer.from_text(text)
    inspector = Inspector(random_weights("lstm", tokenizer, 1), tokenizer, "lstm")
    monkeypatch.setattr(report, "JSON_ROWS", 7)  # pieces end inside every list
    parts = report.report_parts(inspector, text, name="m", best=2)
    data = parts.as_dict()
    assert json.loads("".join(parts.json_pieces())) == data
    assert len(data["prob"]) == len(data["top"]) == len(text)
    for key, values in data["activations"].items():
        state, cell = key[0], int(key[1:])
        assert len(values) == len(text) and state in "hc" and 0 <= cell < 6
    page = report.html_report(parts)
    # The text's "</script>" cannot end the data's element early; the data reads back whole.
    start = page.index('id="inspection-data">') + len('id="inspection-data">')
    end = page.index("</script>", start)
    assert json.loads(page[start:end]) == data
