import csv
import json
import os
import signal

import numpy as np
import pytest
from conftest import TINY, make_text

from textgen import CheckpointError, Sampler, TextgenError, TrainConfig, build_model, training
from textgen.checkpoint import load_checkpoint
from textgen.model import set_weights
from textgen.run import open_run
from textgen.training.train import TrainingInterrupted, learning_rate_at, train
from textgen.training.trainer import COSINE_FLOOR


def _quiet(**kw):
    return dict(progress=False, echo=lambda _: None, **kw)


def test_run_directory_is_self_contained(trained_run):
    names = {p.name for p in trained_run.iterdir()}
    assert {"config.json", "tokenizer.json", "latest.npz", "best.npz", "history.csv"} <= names
    config = json.loads((trained_run / "config.json").read_text())
    assert config["model"]["units"] == TINY["units"]
    assert config["training"]["seq_length"] == TINY["seq_length"]
    rows = list(csv.DictReader((trained_run / "history.csv").open()))
    assert [r["epoch"] for r in rows] == ["1", "2"]
    # The default schedule with the weight average on keeps the peak rate.
    assert [float(r["learning_rate"]) for r in rows] == pytest.approx(
        [TrainConfig().learning_rate] * 2
    )
    assert float(rows[1]["val_bpc"]) == pytest.approx(float(rows[1]["val_loss"]) / np.log(2), 1e-4)
    assert not [p for p in trained_run.iterdir() if p.name.endswith(".tmp")]


def test_checkpoint_loads_into_a_stock_keras_model_with_identical_predictions(trained_run):
    config = json.loads((trained_run / "config.json").read_text())["model"]
    saved = load_checkpoint(trained_run / "best.npz")
    model = build_model(
        config["vocab_size"],
        embedding_dim=config["embedding_dim"],
        units=config["units"],
        num_layers=config["num_layers"],
    )
    set_weights(model, saved.weights)
    sampler = Sampler.from_checkpoint(trained_run)
    ids = sampler.tokenizer.encode("The quick brown fox")
    expected = np.asarray(model(ids[None, :]))[0]
    sampler.reset()
    got = np.stack([sampler.step(int(i)) for i in ids])
    np.testing.assert_allclose(got, expected, atol=1e-5)
    text = sampler.generate(50, temperature=0.5, seed=1)
    assert len(text) == 50


def _interrupt_after_first_epoch(line: str) -> None:
    """Play the user pressing Ctrl-C as the first epoch's summary appears."""
    if line.startswith("epoch "):
        os.kill(os.getpid(), signal.SIGINT)


def _assert_same_checkpoint(a_path, b_path):
    a, b = load_checkpoint(a_path), load_checkpoint(b_path)
    assert a.state.step == b.state.step
    for name, value in a.weights.items():
        np.testing.assert_allclose(b.weights[name], value, atol=1e-5, err_msg=name)
    for x, y in zip(a.optimizer, b.optimizer):
        np.testing.assert_allclose(x, y, atol=1e-5)


class _CtrlCAt(training.Callback):
    """Sends this process SIGINT after training step ``step``: the moment is counted in steps,
    not seconds, so it is the same on a fast or a loaded machine."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_batch_end(self, state, loss):
        if state.step == self.step:
            os.kill(os.getpid(), signal.SIGINT)


def test_interrupted_and_resumed_run_matches_an_uninterrupted_one(tmp_path, corpus):
    settings = {**TINY, "epochs": 3}
    train(corpus, run_dir=tmp_path / "straight", **_quiet(**settings))
    with pytest.raises(TrainingInterrupted):
        train(
            corpus,
            run_dir=tmp_path / "split",
            progress=False,
            echo=_interrupt_after_first_epoch,
            **settings,
        )
    assert load_checkpoint(tmp_path / "split" / "latest.npz").state.epoch == 1
    result = train(corpus, run_dir=tmp_path / "split", resume=True, **_quiet())
    assert result.epochs_done == 3
    rows = list(csv.DictReader((tmp_path / "split" / "history.csv").open()))
    assert [r["epoch"] for r in rows] == ["1", "2", "3"]
    _assert_same_checkpoint(tmp_path / "straight" / "latest.npz", tmp_path / "split" / "latest.npz")


def test_interrupt_mid_epoch_resumes_at_the_same_batch(tmp_path, corpus):
    corpus.write_text(make_text(1500))
    settings = {**TINY, "epochs": 2}
    train(corpus, run_dir=tmp_path / "straight", **_quiet(**settings))
    total = load_checkpoint(tmp_path / "straight" / "latest.npz").state.step
    assert total >= 10
    # Ctrl-C arrives after the step that is 60% of the way through the run.
    with pytest.raises(TrainingInterrupted):
        train(
            corpus,
            run_dir=tmp_path / "split",
            callbacks=[_CtrlCAt(int(total * 0.6))],
            **_quiet(**settings),
        )
    state = load_checkpoint(tmp_path / "split" / "latest.npz").state
    assert 0 < state.step < total
    train(corpus, run_dir=tmp_path / "split", resume=True, **_quiet())
    _assert_same_checkpoint(tmp_path / "straight" / "latest.npz", tmp_path / "split" / "latest.npz")


def test_resume_refuses_a_different_shape(tmp_path, corpus):
    train(corpus, run_dir=tmp_path / "run", **_quiet(**{**TINY, "epochs": 1}))
    before = (tmp_path / "run" / "latest.npz").read_bytes()
    with pytest.raises(CheckpointError, match="units"):
        train(corpus, run_dir=tmp_path / "run", resume=True, **_quiet(units=16, epochs=2))
    with pytest.raises(CheckpointError, match="validation_context"):
        train(corpus, run_dir=tmp_path / "run", resume=True, **_quiet(validation_context=3))
    other = tmp_path / "other.txt"
    other.write_text(make_text() + "Zebra #42!\n")
    with pytest.raises(CheckpointError, match="vocabulary"):
        train(other, run_dir=tmp_path / "run", resume=True, **_quiet(epochs=2))
    assert (tmp_path / "run" / "latest.npz").read_bytes() == before


def test_existing_run_is_never_overwritten(tmp_path, corpus):
    train(corpus, run_dir=tmp_path / "run", **_quiet(**{**TINY, "epochs": 1}))
    before = {p.name: p.read_bytes() for p in (tmp_path / "run").iterdir() if p.is_file()}
    with pytest.raises(CheckpointError, match="already holds a run"):
        train(corpus, run_dir=tmp_path / "run", **_quiet(**TINY))
    assert {p.name: p.read_bytes() for p in (tmp_path / "run").iterdir() if p.is_file()} == before
    with pytest.raises(CheckpointError, match="nothing to resume"):
        train(corpus, run_dir=tmp_path / "fresh", resume=True, **_quiet())


def test_unwritable_run_directory_is_a_clear_error(tmp_path, corpus):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(CheckpointError, match="cannot write"):
        train(corpus, run_dir=blocker / "run", **_quiet(**TINY))


@pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() == 0,
    reason="root ignores directory permissions; Windows has no POSIX permission bits",
)
def test_read_only_run_directory(tmp_path, corpus):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        with pytest.raises(CheckpointError, match="cannot write"):
            train(corpus, run_dir=ro / "run", **_quiet(**TINY))
    finally:
        ro.chmod(0o755)


def test_damaged_checkpoints_are_reported(tmp_path, trained_run):
    import shutil

    run = tmp_path / "copy"
    shutil.copytree(trained_run, run)
    data = (run / "best.npz").read_bytes()
    (run / "best.npz").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="damaged"):
        Sampler.from_checkpoint(run)
    (run / "best.npz").write_bytes(b"garbage" * 100)
    with pytest.raises(CheckpointError, match="damaged"):
        Sampler.from_checkpoint(run)
    with pytest.raises(CheckpointError, match="not a run directory"):
        Sampler.from_checkpoint(tmp_path)
    with pytest.raises(CheckpointError, match="no such run"):
        Sampler.from_checkpoint(tmp_path / "missing")


def test_a_run_killed_before_its_first_checkpoint_can_resume(tmp_path, corpus):
    class Killed(training.Callback):
        def on_batch_end(self, state, loss):
            raise SystemExit("killed")  # stands in for SIGKILL right after start-up

    with pytest.raises(SystemExit):
        train(corpus, run_dir=tmp_path / "run", callbacks=[Killed()], **_quiet(**TINY))
    assert load_checkpoint(tmp_path / "run" / "latest.npz").state.step == 0
    (tmp_path / "run" / ".latest.npz.abc.tmp").write_bytes(b"half a file")
    result = train(corpus, run_dir=tmp_path / "run", resume=True, **_quiet())
    assert result.stopped == "completed" and result.epochs_done == TINY["epochs"]
    assert not list((tmp_path / "run").glob(".*.tmp"))


def test_the_library_trains_on_a_corpus_name(tmp_path, monkeypatch):
    monkeypatch.setenv("TEXTGEN_CORPUS_DIR", str(tmp_path / "corpora"))
    result = train(
        "pydocs", run_dir=tmp_path / "run", epochs=1, units=16, embedding_dim=8, **_quiet()
    )
    assert result.stopped == "completed" and result.epochs_done == 1
    assert (tmp_path / "corpora" / "pydocs.txt").is_file()
    assert open_run(tmp_path / "run").config.corpus["source"] == "pydocs"
    assert len(Sampler.from_checkpoint(result.run_dir).generate(20, seed=1)) == 20


def test_callbacks_see_every_batch_and_epoch_and_can_stop_training(tmp_path, corpus):
    seen = {"begun": 0, "batches": 0, "epochs": []}

    class Watch(training.Callback):
        def on_train_begin(self, state):
            seen["begun"] += 1
            assert state.step == 0

        def on_batch_end(self, state, loss):
            seen["batches"] += 1
            assert state.step == seen["batches"] and np.isfinite(loss)

        def on_epoch_end(self, state, epoch):
            seen["epochs"].append((epoch.epoch, epoch.val_loss is not None))
            return "enough" if epoch.epoch >= 2 else None

    result = train(
        corpus, run_dir=tmp_path / "run", callbacks=[Watch()], **_quiet(**{**TINY, "epochs": 5})
    )
    assert result.stopped == "enough" and result.epochs_done == 2
    assert seen["epochs"] == [(1, True), (2, True)] and seen["begun"] == 1
    assert load_checkpoint(tmp_path / "run" / "latest.npz").state.step == seen["batches"]


def test_weight_average_is_validated_kept_as_best_and_resumed_exactly(tmp_path, corpus):
    corpus.write_text(make_text(1500))
    settings = {**TINY, "epochs": 2, "weight_average": 0.9}
    train(corpus, run_dir=tmp_path / "straight", **_quiet(**settings))
    latest = load_checkpoint(tmp_path / "straight" / "latest.npz")
    best = load_checkpoint(tmp_path / "straight" / "best.npz")
    assert set(latest.average) == set(latest.weights)
    # The average is not the last step's weights, and it is what best.npz kept and validation
    # scored (the last epoch is the best of two here).
    assert not np.allclose(latest.average["dense/kernel"], latest.weights["dense/kernel"])
    if best.state.step == latest.state.step:
        for name, value in latest.average.items():
            np.testing.assert_array_equal(best.weights[name], value)
    total = latest.state.step

    with pytest.raises(TrainingInterrupted):
        train(
            corpus,
            run_dir=tmp_path / "split",
            callbacks=[_CtrlCAt(int(total * 0.6))],
            **_quiet(**settings),
        )
    train(corpus, run_dir=tmp_path / "split", resume=True, **_quiet())
    _assert_same_checkpoint(tmp_path / "straight" / "latest.npz", tmp_path / "split" / "latest.npz")
    resumed = load_checkpoint(tmp_path / "split" / "latest.npz").average
    for name, value in latest.average.items():
        np.testing.assert_allclose(resumed[name], value, atol=1e-5)
    straight_rows = list(csv.DictReader((tmp_path / "straight" / "history.csv").open()))
    split_rows = list(csv.DictReader((tmp_path / "split" / "history.csv").open()))
    assert [r["val_loss"] for r in straight_rows][-1] == [r["val_loss"] for r in split_rows][-1]


def test_weight_decay_shrinks_the_matrices_and_not_the_biases():
    from textgen.backend import keras, tf
    from textgen.config import TrainConfig
    from textgen.training.train import build_train_step, make_optimizer

    config = TrainConfig(units=8, embedding_dim=4, num_layers=2)
    rng = np.random.default_rng(0)
    x, y = (tf.constant(rng.integers(0, 9, (3, 6)), tf.int32) for _ in range(2))
    seed, lr, rate = tf.constant([1, 2], tf.int32), 0.01, 0.5
    after = {}
    for decay in (0.0, rate):
        keras.utils.set_random_seed(0)
        model = build_model(config.model(9))
        before = [v.numpy() for v in model.trainable_variables]
        step = build_train_step(model, make_optimizer(config), weight_decay=decay)
        step(x, y, seed, tf.constant(lr))
        after[decay] = [v.numpy() for v in model.trainable_variables]
    # Adam's step is the same either way (the gradient is taken before the decay), so the
    # difference is the decay alone: lr * rate of each matrix's value before the step.
    for start, plain, decayed in zip(before, after[0.0], after[rate], strict=True):
        shrink = lr * rate * start if start.ndim >= 2 else np.zeros_like(start)
        np.testing.assert_allclose(plain - decayed, shrink, atol=1e-6)
    assert any(start.ndim >= 2 and np.abs(start).max() > 0.1 for start in before)


def test_runs_saved_before_weight_decay_resume_without_it():
    from textgen.config import RunConfig, TrainConfig

    config = RunConfig(TrainConfig().model(30), TrainConfig()).to_json()
    assert config["training"]["weight_decay"] == TrainConfig().weight_decay > 0
    del config["training"]["weight_decay"]
    assert RunConfig.from_json(config).training.weight_decay == 0.0


def test_runs_saved_before_the_auto_schedule_resume_on_their_cosine(tmp_path, corpus):
    from textgen.config import RunConfig

    corpus.write_text(make_text(15))
    settings = dict(TINY, epochs=1, lr_schedule="cosine")
    train(corpus, run_dir=tmp_path / "run", **_quiet(**settings))
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["training"]["lr_schedule"] == "cosine"
    del config["training"]["lr_schedule"]
    assert RunConfig.from_json(config).training.lr_schedule == "cosine"
    train(corpus, run_dir=tmp_path / "run", resume=True, **_quiet(epochs=2))
    rows = list(csv.DictReader((tmp_path / "run" / "history.csv").open()))
    assert float(rows[-1]["learning_rate"]) < TrainConfig().learning_rate  # still decaying


def test_a_budget_without_epochs_is_the_plan(tmp_path, corpus, monkeypatch):
    monkeypatch.setattr("textgen.config.DEFAULT_EPOCHS", 1)  # what a budget must lift
    corpus.write_text(make_text(15))
    settings = {k: v for k, v in TINY.items() if k != "epochs"}
    cosine = TrainConfig(lr_schedule="cosine")
    run = dict(settings, max_time=10.0, lr_schedule="cosine")
    result = train(corpus, run_dir=tmp_path / "run", **_quiet(**run))
    assert result.stopped == "max_time" and result.epochs_done > 1
    state = load_checkpoint(tmp_path / "run" / "latest.npz").state
    assert 10.0 <= state.seconds < 25.0
    rows = list(csv.DictReader((tmp_path / "run" / "history.csv").open()))
    rates = [float(r["learning_rate"]) for r in rows]
    assert rates[-1] < learning_rate_at(cosine, 0.8)  # the schedule spans the budget
    # Both given: whichever ends first (here the epochs).
    both = train(corpus, run_dir=tmp_path / "both", **_quiet(**TINY, max_time=600.0))
    assert both.stopped == "completed" and both.epochs_done == TINY["epochs"]


def test_a_budget_run_resumes_to_the_end_of_its_budget(tmp_path, corpus):
    corpus.write_text(make_text(15))
    settings = {k: v for k, v in TINY.items() if k != "epochs"}
    with pytest.raises(TrainingInterrupted):
        train(corpus, run_dir=tmp_path / "run", callbacks=[_CtrlCAt(3)],
              **_quiet(**settings, max_time=10.0))  # fmt: skip
    assert load_checkpoint(tmp_path / "run" / "latest.npz").state.seconds < 10.0
    result = train(corpus, run_dir=tmp_path / "run", resume=True, **_quiet())
    assert result.stopped == "max_time"
    seconds = load_checkpoint(tmp_path / "run" / "latest.npz").state.seconds
    assert 10.0 <= seconds < 20.0
    # A new budget on resume is that much more time.
    train(corpus, run_dir=tmp_path / "run", resume=True, **_quiet(max_time=3.0))
    assert load_checkpoint(tmp_path / "run" / "latest.npz").state.seconds >= seconds + 3.0


def test_the_auto_schedule_is_constant_with_the_weight_average_and_cosine_without():
    auto = TrainConfig()
    assert auto.lr_schedule == "auto" and auto.weight_average > 0
    assert learning_rate_at(auto, 0.0) == learning_rate_at(auto, 1.0) == auto.learning_rate
    for config in (TrainConfig(weight_average=0), TrainConfig(lr_schedule="cosine")):
        assert learning_rate_at(config, 0.0) == config.learning_rate
        assert learning_rate_at(config, 0.5) < config.learning_rate
        assert learning_rate_at(config, 1.0) == pytest.approx(COSINE_FLOOR * config.learning_rate)
    constant = TrainConfig(lr_schedule="constant", weight_average=0)
    assert learning_rate_at(constant, 1.0) == constant.learning_rate
    with pytest.raises(TextgenError, match="lr schedule"):
        TrainConfig(lr_schedule="linear").validate()


def test_clip_norm_zero_turns_clipping_off_as_on_the_command_line(tmp_path, corpus):
    result = train(
        corpus, run_dir=tmp_path / "run", **{**TINY, "epochs": 1}, clip_norm=0, **_quiet()
    )
    assert result.stopped == "completed"
    assert open_run(tmp_path / "run").config.training.clip_norm is None
    assert TrainConfig(clip_norm=0) == TrainConfig(clip_norm=None)


def _reference_train_step(model, optimizer, noise, grad_norm, weight_decay):
    """The one-process step as it was written before the steps shared one update: clipping
    left to ``optimizer.apply_gradients`` and its ``global_clipnorm``."""
    from textgen.backend import tf
    from textgen.training.forward import make_forward
    from textgen.training.steps import decay_matrices

    forward = make_forward(model, noise)
    variables = model.trainable_variables
    ids = tf.TensorSpec([None, None], tf.int32)
    signature = [ids, ids, tf.TensorSpec([2], tf.int32), tf.TensorSpec([], tf.float32)]

    @tf.function(input_signature=signature)
    def step(x, y, seed, lr):
        with tf.GradientTape() as tape:
            logits = forward(x, training=True, seed=seed)
            loss = tf.reduce_mean(
                tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=logits)
            )
        grads = tape.gradient(loss, variables)
        grad_norm.assign(tf.linalg.global_norm(grads))
        optimizer.learning_rate.assign(lr)
        decay_matrices(variables, lr, weight_decay)
        optimizer.apply_gradients(zip(grads, variables))
        return loss

    return step


@pytest.mark.parametrize("clip_norm", [0.05, None])
def test_the_one_process_step_updates_as_apply_gradients_did_to_the_last_bit(clip_norm):
    from textgen.backend import keras, tf
    from textgen.model import get_weights
    from textgen.training.steps import build_train_step, make_optimizer

    config = TrainConfig(
        units=16,
        embedding_dim=4,
        num_layers=2,
        dropout=0.3,
        weight_drop=0.2,
        embedding_dropout=0.1,
        clip_norm=clip_norm,  # 0.05 clips every step
    )
    rng = np.random.default_rng(0)
    batches = [rng.integers(0, 11, (2, 5, 7)).astype(np.int32) for _ in range(5)]
    results = []
    for build in (_reference_train_step, None):
        keras.utils.set_random_seed(0)
        model = build_model(config.model(11))
        optimizer = make_optimizer(config)
        optimizer.build(model.trainable_variables)
        norm = tf.Variable(0.0)
        noise, decay = config.noise(), config.weight_decay
        if build is None:
            step = build_train_step(model, optimizer, noise, norm, weight_decay=decay)
        else:
            step = build(model, optimizer, noise, norm, decay)
        losses = [
            float(step(x, y, tf.constant([0, i]), tf.constant(0.01 * (i + 1))))
            for i, (x, y) in enumerate(batches)
        ]
        moments = [np.asarray(v.numpy()) for v in optimizer.variables]
        results.append((losses, float(norm.numpy()), get_weights(model), moments))
    (losses, norm, weights, moments), (new_losses, new_norm, new_weights, new_moments) = results
    assert new_losses == losses and new_norm == norm
    for name, value in weights.items():
        np.testing.assert_array_equal(new_weights[name], value, err_msg=name)
    for a, b in zip(moments, new_moments, strict=True):
        np.testing.assert_array_equal(b, a)


def test_patience_stops_a_run_that_no_longer_improves(tmp_path, corpus):
    from textgen.config import TrainState
    from textgen.training.callbacks import EarlyStopping

    stop = EarlyStopping(2)
    state = TrainState(epochs_without_improvement=1)
    assert stop.on_epoch_end(state, None) is None
    state.epochs_without_improvement = 2
    assert stop.on_epoch_end(state, None) == "early_stopping"
    # A rate too small to move a float32 weight: the first epoch sets the best, no later one
    # beats it.
    settings = {**TINY, "epochs": 10, "learning_rate": 1e-12, "patience": 2}
    result = train(corpus, run_dir=tmp_path / "run", **_quiet(**settings))
    assert result.stopped == "early_stopping" and result.epochs_done == 3


def test_resume_checks_the_run_as_open_run_does(tmp_path, trained_run, corpus):
    import shutil

    from textgen.tokenizer import Tokenizer

    run = tmp_path / "copy"
    shutil.copytree(trained_run, run)
    Tokenizer.from_text("ab").save(run / "tokenizer.json")
    with pytest.raises(CheckpointError, match=r"the tokenizer has \d+ ids"):
        open_run(run, "latest")
    with pytest.raises(CheckpointError, match=r"the tokenizer has \d+ ids"):
        train(corpus, run_dir=run, resume=True, **_quiet(epochs=3))


def test_one_process_is_a_cluster_of_one_that_adds_nothing():
    from textgen.training.distribute import LOCAL, make_cluster

    assert make_cluster("none") is LOCAL
    assert LOCAL.is_chief and (LOCAL.worker, LOCAL.workers) == (0, 1)
    arrays = [np.arange(3.0), np.ones(2, np.int32)]
    assert all(a is b for a, b in zip(LOCAL.sum(arrays), arrays, strict=True))
    assert all(a is b for a, b in zip(LOCAL.broadcast_arrays(arrays), arrays, strict=True))
    assert LOCAL.broadcast_text("chief's") == "chief's"
    assert LOCAL.local_rows(7) == [(0, 7)]

    def step(*args):
        return args

    assert LOCAL.summed_over_replicas(step, []) is step
