"""Training on tf.distribute: replicas, a cluster of worker processes, faults, the GPU path.

Strategies must exist before TensorFlow starts its runtime, which this test process has long
done, so every strategy here lives in a child process: a script for ``MirroredStrategy`` over
two logical CPU devices, and ``textgen train`` workers on free 127.0.0.1 ports for
``MultiWorkerMirroredStrategy``.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import free_ports, make_text

from textgen.errors import TextgenError
from textgen.training.distribute import choose_path, split_rows, worker_of

GPU = "/physical_device:GPU:0"


def test_the_device_choice_follows_the_visible_gpus():
    assert choose_path("auto", []) == "fast"
    assert choose_path("auto", [GPU]) == "stock"
    assert choose_path("gpu", [GPU]) == "stock"
    assert choose_path("cpu", [GPU]) == "fast"
    assert choose_path("cpu", []) == "fast"
    with pytest.raises(TextgenError, match="no GPU"):
        choose_path("gpu", [])
    with pytest.raises(TextgenError, match="device must be"):
        choose_path("tpu", [GPU])


def test_tf_config_names_the_worker_or_says_what_is_wrong():
    cluster = {"worker": ["127.0.0.1:1", "127.0.0.1:2"]}
    text = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": 1}})
    assert worker_of(text) == (1, 2)
    with pytest.raises(TextgenError, match="TF_CONFIG"):
        worker_of(None)
    with pytest.raises(TextgenError, match="not a cluster description"):
        worker_of("{not json")
    with pytest.raises(TextgenError, match="index 2"):
        worker_of(json.dumps({"cluster": cluster, "task": {"type": "worker", "index": 2}}))
    ps = {**cluster, "ps": ["127.0.0.1:3"]}
    with pytest.raises(TextgenError, match="only 'worker'"):
        worker_of(json.dumps({"cluster": ps, "task": {"type": "worker", "index": 0}}))


def test_rows_split_into_contiguous_blocks_that_cover_the_batch():
    assert split_rows(7, 2) == [(0, 3), (3, 7)]
    assert split_rows(1, 2) == [(0, 0), (0, 1)]
    for rows in range(12):
        blocks = split_rows(rows, 3)
        assert blocks[0][0] == 0 and blocks[-1][1] == rows
        assert all(a[1] == b[0] for a, b in zip(blocks, blocks[1:], strict=False))


@pytest.mark.parametrize(("shape", "axis"), [((9, 6, 8), 1), ((6, 7, 5), 0), ((3, 5, 1), 1)])
def test_a_replicas_dropout_mask_is_its_rows_of_the_whole_batchs(shape, axis):
    from textgen.backend import tf
    from textgen.training.forward import stateless_dropout

    seed = tf.constant([3, 9], tf.int32)
    ones = np.ones(shape, np.float32)
    whole = stateless_dropout(tf.constant(ones), 0.5, seed, batch_axis=axis).numpy()
    assert 0 < (whole == 0).mean() < 1
    rows = shape[axis]
    for lo, hi in [*split_rows(rows, 2), (1, 4), (2, 2)]:
        index = tuple(slice(lo, hi) if a == axis else slice(None) for a in range(3))
        part = stateless_dropout(
            tf.constant(ones[index]), 0.5, seed, rows=(lo, rows), batch_axis=axis
        )
        np.testing.assert_array_equal(part.numpy(), whole[index])
    other = stateless_dropout(tf.constant(ones), 0.5, seed + 1, batch_axis=axis).numpy()
    assert not np.array_equal(other, whole)


_MIRRORED = r"""
import json, sys
import numpy as np
from textgen.backend import keras, tf

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

from textgen.config import TrainConfig
from textgen.training.distribute import make_cluster
from textgen.model import build_model, get_weights
from textgen.training.train import build_replica_train_step, build_train_step, make_optimizer

cluster = make_cluster("mirrored")
# A small clip norm, so that clipping acts; dropout (on outputs, U and characters), so that
# the masks must line up; weight decay, which the replicas' step applies itself.
cfg = TrainConfig(
    units=8,
    embedding_dim=4,
    num_layers=2,
    dropout=0.3,
    weight_drop=0.3,
    embedding_dropout=0.3,
    weight_decay=0.5,
    clip_norm=0.05,
)
vocab, rows, steps = 11, 7, 5  # 7 rows: the replicas get 3 and 4
rng = np.random.default_rng(0)
x = rng.integers(0, vocab, (rows, steps)).astype(np.int32)
y = rng.integers(0, vocab, (rows, steps)).astype(np.int32)
seed, lr = tf.constant([3, 4], tf.int32), tf.constant(0.01)

def state(model, optimizer):
    # Adam's first moment after one step is (1 - beta_1) times the clipped gradient.
    weights = {k: v.tolist() for k, v in get_weights(model).items()}
    moments = [np.asarray(v.numpy()).tolist() for v in optimizer.variables]
    return weights, moments

keras.utils.set_random_seed(0)
model = build_model(cfg.model(vocab))
optimizer = make_optimizer(cfg)
optimizer.build(model.trainable_variables)
norm = tf.Variable(0.0)
step = build_train_step(model, optimizer, cfg.noise(), norm, weight_decay=cfg.weight_decay)
loss = float(step(x, y, seed, lr))
single = dict(loss=loss, norm=float(norm.numpy()), state=state(model, optimizer))

keras.utils.set_random_seed(0)
with cluster.strategy.scope():
    model = build_model(cfg.model(vocab))
    optimizer = make_optimizer(cfg)
    optimizer.build(model.trainable_variables)
    norm = tf.Variable(0.0)
step = build_replica_train_step(
    cluster, model, optimizer, cfg.noise(), norm, weight_decay=cfg.weight_decay
)
blocks = cluster.local_rows(rows)
px = cluster.per_replica([tf.constant(x[a:b]) for a, b in blocks])
py = cluster.per_replica([tf.constant(y[a:b]) for a, b in blocks])
offsets = cluster.per_replica([tf.constant(a, tf.int32) for a, _ in blocks])
votes = tf.constant([0.0, 1.0, 0.0])
loss, votes = step(px, py, offsets, tf.constant(rows), seed, lr, votes)
replicated = dict(loss=float(loss), norm=float(norm.numpy()), state=state(model, optimizer))
json.dump(dict(replicas=cluster.replicas, votes=votes.numpy().tolist(), single=single,
               replicated=replicated), sys.stdout)
"""


def test_two_replicas_take_the_same_step_as_one_device():
    out = subprocess.run(
        [sys.executable, "-c", _MIRRORED], capture_output=True, text=True, timeout=240
    )
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout)
    assert result["replicas"] == 2
    assert result["votes"] == [0.0, 2.0, 0.0]  # summed over the replicas
    single, replicated = result["single"], result["replicated"]
    assert replicated["loss"] == pytest.approx(single["loss"], abs=1e-5)
    assert replicated["norm"] == pytest.approx(single["norm"], abs=1e-5)
    assert single["norm"] > 0.05 * 2  # the clip acted
    weights, moments = single["state"]
    other_weights, other_moments = replicated["state"]
    for name, value in weights.items():
        np.testing.assert_allclose(other_weights[name], value, atol=1e-5, err_msg=name)
    assert len(moments) == len(other_moments)
    for a, b in zip(moments, other_moments, strict=True):
        np.testing.assert_allclose(b, a, atol=1e-5)


def test_the_stock_keras_path_computes_the_same_step_as_the_fast_one():
    from textgen.backend import keras, tf
    from textgen.config import TrainConfig
    from textgen.model import build_model, get_weights
    from textgen.training.evaluation import build_eval_step
    from textgen.training.train import build_train_step, make_optimizer

    cfg = TrainConfig(units=8, embedding_dim=4, num_layers=2, dropout=0.0)
    rng = np.random.default_rng(1)
    x = rng.integers(0, 9, (4, 6)).astype(np.int32)
    y = rng.integers(0, 9, (4, 6)).astype(np.int32)
    results = []
    for stock in (False, True):
        keras.utils.set_random_seed(0)
        model = build_model(cfg.model(9))
        optimizer = make_optimizer(cfg)
        optimizer.build(model.trainable_variables)
        step = build_train_step(model, optimizer, stock=stock)
        losses = [float(step(x, y, tf.constant([0, i]), tf.constant(0.01))) for i in range(3)]
        scored = build_eval_step(model, stock=stock)(x, y, np.zeros(4, np.int32), 6)
        moments = [np.asarray(v.numpy()) for v in optimizer.variables]
        results.append((losses, float(scored[0]), get_weights(model), moments))
    (fast_losses, fast_eval, fast_w, fast_m), (losses, scored, weights, moments) = results
    np.testing.assert_allclose(losses, fast_losses, atol=1e-5)
    assert losses[-1] < losses[0]  # it trains
    assert scored == pytest.approx(fast_eval, abs=1e-4)
    for name, value in fast_w.items():
        np.testing.assert_allclose(weights[name], value, atol=1e-5, err_msg=name)
    for a, b in zip(fast_m, moments, strict=True):
        np.testing.assert_allclose(b, a, atol=1e-5)


# -- a cluster of two worker processes ------------------------------------------------------

SETTINGS = [
    "--epochs",
    "6",
    "--batch-size",
    "8",
    "--seq-length",
    "16",
    "--embedding-dim",
    "4",
    "--units",
    "16",
    "--dropout",
    "0.1",
    "--sample-every",
    "0",
    "--quiet",
]


def _hosts(tmp_path: Path, text: str) -> list[Path]:
    """Two folders standing for two machines, each with its own copy of the corpus."""
    hosts = []
    for i in range(2):
        host = tmp_path / f"host{i}"
        (host / "tmp").mkdir(parents=True)
        (host / "corpus.txt").write_text(text, encoding="utf-8")
        hosts.append(host)
    return hosts


def _start_workers(hosts: list[Path], *args: str) -> list[subprocess.Popen]:
    """``textgen train`` on each host with the same command and its own TF_CONFIG task."""
    workers = [f"127.0.0.1:{port}" for port in free_ports(len(hosts))]
    procs = []
    for index, host in enumerate(hosts):
        tf_config = {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}
        env = dict(os.environ, TF_CONFIG=json.dumps(tf_config), TMPDIR=str(host / "tmp"))
        command = [sys.executable, "-m", "textgen", "train", "corpus.txt"]
        command += ["--checkpoint-dir", "run", "--distribute", "multi-worker", *args]
        procs.append(
            subprocess.Popen(
                command,
                cwd=host,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    return procs


def _finish(procs: list[subprocess.Popen], timeout: float = 240) -> list[tuple[int, str]]:
    return [(p.wait(timeout=timeout), p.stdout.read()) for p in procs]


def _val_losses(run_dir: Path) -> list[float]:
    with open(run_dir / "history.csv", encoding="utf-8") as f:
        return [float(row["val_loss"]) for row in csv.DictReader(f)]


@pytest.fixture(scope="module")
def cluster_run(tmp_path_factory):
    """Two workers trained once, uninterrupted, for the tests below."""
    tmp_path = tmp_path_factory.mktemp("cluster")
    hosts = _hosts(tmp_path, make_text(400))
    results = _finish(_start_workers(hosts, *SETTINGS))
    return hosts, results


def test_two_workers_train_like_one_process_and_only_the_chief_writes(cluster_run, tmp_path):
    from textgen.training.train import train

    hosts, results = cluster_run
    for code, output in results:
        assert code == 0, output[-3000:]
        assert "completed after 6.00 epochs" in output
    # The other worker wrote nothing: not in its run directory, not in its folder; its ids
    # were cached in its temporary folder.
    assert sorted(p.name for p in hosts[1].iterdir()) == ["corpus.txt", "tmp"]
    assert [p.name for p in (hosts[1] / "tmp").iterdir()] == ["textgen-cache"]
    run = hosts[0] / "run"
    assert {"config.json", "latest.npz", "best.npz", "history.csv"} <= {
        p.name for p in run.iterdir()
    }
    # The same settings on one process.
    single = tmp_path / "single"
    options = dict(
        epochs=6,
        batch_size=8,
        seq_length=16,
        embedding_dim=4,
        units=16,
        dropout=0.1,
        sample_every=0,
    )
    train(hosts[0] / "corpus.txt", run_dir=single, progress=False, echo=lambda _: None, **options)
    ours, theirs = _val_losses(run), _val_losses(single)
    assert len(ours) == len(theirs) == 6
    assert abs(ours[-1] - theirs[-1]) < 0.01
    assert min(ours) == pytest.approx(min(theirs), abs=0.01)


def test_a_lost_worker_stops_the_other_and_resume_finishes_the_run(cluster_run, tmp_path):
    hosts = _hosts(tmp_path, make_text(400))
    chief, other = _start_workers(hosts, *SETTINGS)
    history = hosts[0] / "run" / "history.csv"
    deadline = time.monotonic() + 180
    while not history.exists() and chief.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert history.exists(), chief.stdout.read()[-3000:] if chief.poll() is not None else ""
    other.send_signal(signal.SIGKILL)
    killed = time.monotonic()
    code = chief.wait(timeout=60)  # bounded: a hang fails here
    waited = time.monotonic() - killed
    output = chief.stdout.read()
    other.wait()
    assert code == 1, output[-3000:]
    assert waited < 60
    assert "lost contact with the cluster" in output and "--resume" in output
    assert "Traceback" not in output
    assert len(_val_losses(hosts[0] / "run")) < 6  # it did stop early

    results = _finish(_start_workers(hosts, "--resume", "--quiet"))
    for code, output in results:
        assert code == 0, output[-3000:]
        assert "completed after 6.00 epochs" in output
    # Resuming from the chief's last checkpoint ends where the uninterrupted cluster did.
    uninterrupted = np.load(cluster_run[0][0] / "run" / "latest.npz")
    resumed = np.load(hosts[0] / "run" / "latest.npz")
    for key in uninterrupted.files:
        if key.startswith("w/"):
            np.testing.assert_allclose(resumed[key], uninterrupted[key], atol=1e-5, err_msg=key)
    assert sorted(p.name for p in hosts[1].iterdir()) == ["corpus.txt", "tmp"]
