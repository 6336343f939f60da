"""Scaling on a cluster: one worker on one core against two workers on one core each.

Both sides train the same corpus with the same seed and the same global batch for one epoch
through ``textgen train``: first one process pinned to core 0 (``taskset -c 0``), then two
``--distribute multi-worker`` processes on 127.0.0.1 pinned to cores 0 and 1, each in its own
folder as if on its own machine. It reports the time of the epoch (history.csv's ``seconds``,
training and validation) and of the whole process, the speed-up, the validation losses, which
folders hold a run directory, and the all-reduce's share of a step: two pinned workers time the
all-reduce of the model's gradients alone, which is divided by the cluster's time per step.

The machine may be shared: each line says how busy the other cores were meanwhile, and only
the ratios of one run mean much.

    python benchmarks/distributed.py --chars 300000
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CORPUS = REPO.parent / "shared" / "corpora" / "tinyshakespeare.txt"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, default=CORPUS)
    parser.add_argument("--chars", type=int, default=300_000, help="first N characters; 0: all")
    parser.add_argument("--batch-size", type=int, default=32, help="the global batch")
    parser.add_argument("--units", type=int, default=512)
    parser.add_argument("--seq-length", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cores", default="0,1", help="the two cores to pin to")
    parser.add_argument("--keep", type=Path, help="keep the run folders here")
    parser.add_argument("--allreduce-worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--repeats", type=int, default=20, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def free_ports(n: int) -> list[int]:
    """``n`` free TCP ports on 127.0.0.1."""
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def cluster_envs(n: int) -> list[dict]:
    """The environment of each of ``n`` workers: its TF_CONFIG."""
    workers = [f"127.0.0.1:{p}" for p in free_ports(n)]
    return [
        dict(
            os.environ,
            TF_CONFIG=json.dumps(
                {"cluster": {"worker": workers}, "task": {"type": "worker", "index": i}}
            ),
        )
        for i in range(n)
    ]


def busy_jiffies() -> int:
    """Busy CPU time of the whole machine so far, in clock ticks."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    values = [int(v) for v in fields]
    return sum(values) - values[3] - values[4]  # less idle and iowait


def train_command(args: argparse.Namespace, extra: list[str]) -> list[str]:
    """``textgen train`` with this benchmark's settings."""
    command = [sys.executable, "-m", "textgen", "train", "corpus.txt", "--checkpoint-dir", "run"]
    command += ["--epochs", "1", "--batch-size", str(args.batch_size), "--units", str(args.units)]
    command += ["--seq-length", str(args.seq_length), "--seed", str(args.seed)]
    return command + ["--sample-every", "0", "--quiet", *extra]


def run_side(args, hosts: list[Path], cores: list[str]) -> dict:
    """Train one epoch on ``len(hosts)`` pinned workers; their epoch time and losses."""
    envs = [dict(os.environ)] if len(hosts) == 1 else cluster_envs(len(hosts))
    extra = [] if len(hosts) == 1 else ["--distribute", "multi-worker"]
    started, busy0 = time.monotonic(), busy_jiffies()
    procs = []
    for host, env, core in zip(hosts, envs, cores, strict=False):
        command = ["taskset", "-c", core, *train_command(args, extra)]
        log = open(host / "train.log", "w")  # noqa: SIM115 - closed below
        procs.append((subprocess.Popen(command, cwd=host, env=env, stdout=log, stderr=log), log))
    codes = []
    for proc, log in procs:
        codes.append(proc.wait())
        log.close()
    wall = time.monotonic() - started
    busy = (busy_jiffies() - busy0) / os.sysconf("SC_CLK_TCK")
    with open(hosts[0] / "run" / "history.csv", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    return {
        "codes": codes,
        "wall": wall,
        "epoch_seconds": float(rows[-1]["seconds"]),
        "val_loss": float(rows[-1]["val_loss"]),
        "steps": int(rows[-1]["step"]),
        "run_dirs": [str(h) for h in hosts if (h / "run").exists()],
        "machine_busy_cores": busy / wall,
    }


def allreduce_worker(args: argparse.Namespace) -> None:
    """Inside a worker: time the all-reduce of the model's gradients, print ms per step."""
    from textgen.training.distribute import make_cluster

    cluster = make_cluster("multi-worker")
    from textgen.backend import tf
    from textgen.model import build_model

    model = build_model(65, units=args.units)
    shapes = [tuple(v.shape) for v in model.trainable_variables]
    grads = [tf.ones(s) for s in shapes]
    strategy = cluster.strategy

    def replica(values):
        values = [tf.identity(v) for v in values]
        context = tf.distribute.get_replica_context()
        return context.all_reduce(tf.distribute.ReduceOp.SUM, values)

    step = tf.function(lambda values: strategy.run(replica, args=(values,)))
    step(grads)
    step(grads)
    started = time.perf_counter()
    for _ in range(args.repeats):
        out = step(grads)
    float(strategy.experimental_local_results(out[0])[0][0, 0])
    ms = (time.perf_counter() - started) / args.repeats * 1000
    params = sum(int(tf.size(g)) for g in grads)
    print(json.dumps({"ms": ms, "params": params}))


def time_allreduce(args, cores: list[str]) -> dict:
    """Two pinned workers timing the gradients' all-reduce; the chief's answer."""
    command = [sys.executable, __file__, "--allreduce-worker", "--units", str(args.units)]
    procs = [
        subprocess.Popen(["taskset", "-c", core, *command], env=env, stdout=subprocess.PIPE)
        for env, core in zip(cluster_envs(2), cores, strict=True)
    ]
    outputs = [p.communicate()[0].decode() for p in procs]
    return json.loads(outputs[0].strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    """Run both sides and print the comparison."""
    args = parse_args(argv)
    if args.allreduce_worker:
        allreduce_worker(args)
        return
    if shutil.which("taskset") is None:
        sys.exit("this benchmark needs taskset (util-linux) to pin the workers to cores")
    cores = args.cores.split(",")
    text = args.corpus.read_text(encoding="utf-8")
    if args.chars:
        text = text[: args.chars]
    root = Path(args.keep or tempfile.mkdtemp(prefix="textgen-distributed-"))
    sides = {}
    for name, count in (("1 worker", 1), ("2 workers", 2)):
        hosts = [root / name.replace(" ", "-") / f"host{i}" for i in range(count)]
        for host in hosts:
            host.mkdir(parents=True, exist_ok=True)
            (host / "corpus.txt").write_text(text, encoding="utf-8")
        sides[name] = run_side(args, hosts, cores[:count])
    reduce = time_allreduce(args, cores)
    one, two = sides["1 worker"], sides["2 workers"]
    print(f"corpus: {args.corpus.name}, {len(text):,} characters; global batch {args.batch_size}")
    print(f"units {args.units}, seq_length {args.seq_length}, seed {args.seed}, 1 epoch")
    for name, side in sides.items():
        print(
            f"{name:>9}: epoch {side['epoch_seconds']:7.1f} s ({side['steps']} steps), "
            f"process {side['wall']:6.1f} s, val loss {side['val_loss']:.4f}, exit codes "
            f"{side['codes']}, run dirs written {len(side['run_dirs'])}, "
            f"machine busy {side['machine_busy_cores']:.2f} cores"
        )
    step_ms = two["epoch_seconds"] / two["steps"] * 1000
    print(f"speed-up per epoch: {one['epoch_seconds'] / two['epoch_seconds']:.2f}x (goal >= 1.7x)")
    print(f"speed-up per process: {one['wall'] / two['wall']:.2f}x")
    print(f"val loss difference: {abs(one['val_loss'] - two['val_loss']):.4f} nats")
    print(
        f"all-reduce of {reduce['params']:,} gradients: {reduce['ms']:.1f} ms, "
        f"{reduce['ms'] / step_ms:.0%} of the cluster's {step_ms:.0f} ms step (epoch time / steps)"
    )
    if not args.keep:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
