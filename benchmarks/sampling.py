"""Characters per second when sampling: the usual Keras recipes against the numpy engine.

Rows, for a model with vocabulary 65, embedding 64 and LSTM layers of 512 units (random weights):

1. ``model.predict`` on the last 40 characters for every new character (keras-io / textgenrnn);
   1b is the same with a direct ``model(window)`` call.
2. One stateful ``tf.function`` call per character that samples in TensorFlow and returns the
   states (TensorFlow text-generation tutorial); 2b steps all streams in that call. 2c runs
   32 steps of all streams per call in a graph-side loop, sampling included.
3. textgen's ``Sampler.stream``, one stream. 4. ``Sampler.stream_batch``, all streams at once
   (total characters). Both include decoding the ids to text.
5. The bare numpy recurrence (``h @ U``, one tanh over the gates, the cell update; no embedding,
   bias, output layer or sampling) in the engine's layout: the ceiling for 3 (5a) and 4 (5b).

After the tables: ``textgen sample`` as a whole process against ``import tensorflow``, and one
stream of ``textgen sample`` with the command line's choice of BLAS threads against one thread
and all cores. The command line counts idle cores from the load average, which the tables above
have just raised, so run ``--layers`` small or wait for a quiet minute to see its idle choice.

Rows take turns in short slices and each reports its best slice, so a burst of load from other
processes hits every row alike; compare ratios within one run, not across runs. Row 1 is so slow
that it is timed once over ``--window-chars`` characters.

    python benchmarks/sampling.py --seconds 3 --layers 1 2
    OPENBLAS_NUM_THREADS=1 python benchmarks/sampling.py   # single-threaded BLAS
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from textgen.sampler import Sampler
from textgen.tokenizer import Tokenizer

VOCAB, EMBEDDING, WINDOW = 65, 64, 40
SLICES = 8

Runner = Callable[[int], int]
"""``run(n)`` does n iterations and returns how many characters they produced."""


def time_slice(run: Runner, seconds: float) -> float:
    """Characters per second of ``run`` over about ``seconds``."""
    chars, n, start = 0, 1, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        chars += run(n)
        n = min(n * 2, 256)
    return chars / elapsed


def best_rates(runners: dict[str, Runner], seconds: float) -> dict[str, float]:
    """Give each runner ``SLICES`` turns totalling ``seconds``; return its best rate."""
    for run in runners.values():
        run(3)  # warm caches and trace tf.functions before any clock starts
    best = dict.fromkeys(runners, 0.0)
    for _ in range(SLICES):
        for key, run in runners.items():
            best[key] = max(best[key], time_slice(run, seconds / SLICES))
            # TensorFlow's pool threads spin briefly after work; let them settle.
            time.sleep(0.02)
    return best


# -- textgen, through the public Sampler ------------------------------------------------------


def textgen_single_stream(sampler: Sampler) -> Runner:
    """One endless stream from ``Sampler.stream``; each run pulls n characters."""
    stream = sampler.stream(None, temperature=1.0, seed=0)

    def run(n: int) -> int:
        for _ in range(n):
            next(stream)
        return n

    return run


def textgen_streams(sampler: Sampler, streams: int) -> Runner:
    """``streams`` samples advancing together through ``Sampler.stream_batch``."""
    batch = sampler.stream_batch(streams, None, temperature=1.0, seed=0)

    def run(n: int) -> int:
        for _ in range(n):
            next(batch)
        return n * streams

    return run


def bare_recurrence(units: int, layers: int, streams: int) -> Runner:
    """Just the LSTM recurrence, in the (features, streams) layout the engine uses."""
    rng = np.random.default_rng(0)
    gates = 4 * units
    h = np.zeros((layers * units, streams), np.float32)
    c = np.zeros((layers * units, streams), np.float32)
    g = np.empty((gates, streams), np.float32)
    i_gate, f_gate, o_gate, candidate = (g[k * units : (k + 1) * units] for k in range(4))
    plan = []
    for i in range(layers):
        # Deeper layers multiply [h below; own h] by stacked kernels, as the engine does.
        inp = h[:units] if i == 0 else h[(i - 1) * units : (i + 1) * units]
        mat = (rng.standard_normal((gates, inp.shape[0])) * 0.02).astype(np.float32)
        plan.append((mat, inp, h[i * units : (i + 1) * units], c[i * units : (i + 1) * units]))

    def run(n: int) -> int:
        for _ in range(n):
            for mat, inp, h_out, c_out in plan:
                np.matmul(mat, inp, out=g)
                np.tanh(g, out=g)
                np.multiply(c_out, f_gate, out=c_out)
                np.multiply(i_gate, candidate, out=i_gate)
                np.add(c_out, i_gate, out=c_out)
                np.tanh(c_out, out=i_gate)
                np.multiply(o_gate, i_gate, out=h_out)
        return n * streams

    return run


# -- TensorFlow baselines ---------------------------------------------------------------------


def window_runner(model, use_predict: bool) -> Runner:
    """Re-read the last ``WINDOW`` characters for every new one, sampling in numpy."""
    rng = np.random.default_rng(0)
    text = list(rng.integers(0, VOCAB, WINDOW))

    def run(n: int) -> int:
        for _ in range(n):
            window = np.array([text[-WINDOW:]], np.int32)
            if use_predict:
                out = model.predict(window, verbose=0)
            else:
                out = np.asarray(model(window, training=False))
            logits = out[0, -1].astype(np.float64)
            probs = np.exp(logits - logits.max())
            text.append(rng.choice(VOCAB, p=probs / probs.sum()))
        return n

    return run


def _parts(model) -> tuple:
    """The model's embedding layer, output layer and recurrent cells."""
    cells = []
    while True:
        try:
            cells.append(model.get_layer(f"rnn_{len(cells)}").cell)
        except ValueError:
            break
    return model.get_layer("embedding"), model.get_layer("dense"), cells


def _zero_states(cells, streams: int) -> list:
    import tensorflow as tf

    zeros = tf.zeros((streams, cells[0].units))
    return [[zeros, zeros] if isinstance(cell.state_size, list) else [zeros] for cell in cells]


def tf_one_step(model, streams: int) -> Runner:
    """One stateful ``tf.function`` call per character, sampling inside TensorFlow."""
    import tensorflow as tf

    embedding, dense, cells = _parts(model)

    @tf.function
    def one_step(ids, states):
        x = embedding(ids)
        new_states = []
        for cell, state in zip(cells, states, strict=True):
            x, state = cell(x, state)
            new_states.append(state)
        next_ids = tf.random.categorical(dense(x), 1, dtype=tf.int32)[:, 0]
        return next_ids, new_states

    states = _zero_states(cells, streams)
    ids = tf.zeros((streams,), tf.int32)

    def run(n: int) -> int:
        nonlocal ids, states
        for _ in range(n):
            ids, states = one_step(ids, states)
        ids.numpy()  # a sampler needs the ids in Python; this also waits for the work
        return n * streams

    return run


def tf_graph_loop(model, streams: int, steps: int = 32) -> Runner:
    """``steps`` characters per ``tf.function`` call: the loop, sampling included, runs in the
    graph and only the generated ids come back to Python."""
    import tensorflow as tf

    embedding, dense, cells = _parts(model)

    @tf.function
    def many_steps(ids, states):
        out = tf.TensorArray(tf.int32, size=steps)
        for t in tf.range(steps):
            x = embedding(ids)
            new_states = []
            for cell, state in zip(cells, states, strict=True):
                x, state = cell(x, state)
                new_states.append(state)
            states = new_states
            ids = tf.random.categorical(dense(x), 1, dtype=tf.int32)[:, 0]
            out = out.write(t, ids)
        return out.stack(), ids, states

    ids, states = tf.zeros((streams,), tf.int32), _zero_states(cells, streams)

    def run(n: int) -> int:
        nonlocal ids, states
        for _ in range(n):
            generated, ids, states = many_steps(ids, states)
            generated.numpy()
        return n * steps * streams

    return run


# -- report -----------------------------------------------------------------------------------


def blas_threads() -> str:
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return os.environ.get("OPENBLAS_NUM_THREADS", "default")
    return ", ".join(f"{p['internal_api']}={p['num_threads']}" for p in threadpool_info())


def table(layers: int, args: argparse.Namespace) -> None:
    """Build a model with random weights, time every row and print the table."""
    from textgen.model import build_model, get_weights

    units, streams = args.units, args.streams
    model = build_model(VOCAB, embedding_dim=EMBEDDING, units=units, num_layers=layers)
    weights = get_weights(model)
    tokenizer = Tokenizer([chr(c) for c in range(32, 32 + VOCAB)])
    labels = {
        "1": f"model.predict, {WINDOW}-char window",
        "1b": f"model(window), {WINDOW}-char window",
        "2": "tf.function per char, 1 stream",
        "2b": f"tf.function per char, {streams} streams",
        "2c": f"graph-side loop, {streams} streams",
        "3": "textgen, 1 stream",
        "4": f"textgen, {streams} streams",
        "5a": "bare recurrence, 1 stream",
        "5b": f"bare recurrence, {streams} streams",
    }
    rates = best_rates(
        {
            "3": textgen_single_stream(Sampler(weights, tokenizer, cell="lstm")),
            "4": textgen_streams(Sampler(weights, tokenizer, cell="lstm"), streams),
            "5a": bare_recurrence(units, layers, 1),
            "5b": bare_recurrence(units, layers, streams),
            "1b": window_runner(model, use_predict=False),
            "2": tf_one_step(model, 1),
            "2b": tf_one_step(model, streams),
            "2c": tf_graph_loop(model, streams),
        },
        args.seconds,
    )
    predict = window_runner(model, use_predict=True)
    predict(2)
    start = time.perf_counter()
    rates["1"] = predict(args.window_chars) / (time.perf_counter() - start)

    ceilings = {"3": "5a", "4": "5b"}
    print(f"\n{layers} x LSTM {units}, vocab {VOCAB}, embedding {EMBEDDING}")
    print(f"{'':44s} {'chars/s':>10s} {'x vs 2':>8s} {'of ceiling':>11s}")
    for key, label in labels.items():
        share = f"{rates[key] / rates[ceilings[key]]:.0%}" if key in ceilings else ""
        line = f"{key + '. ' + label:44s} {rates[key]:10,.0f} {rates[key] / rates['2']:8.2f}"
        print(f"{line} {share:>11s}")


def _saved_run(folder: Path) -> Path:
    """A 1 x LSTM 512 run directory with random weights, as ``textgen sample`` reads it."""
    from textgen import run as ckpt
    from textgen.checkpoint import Checkpoint, save_checkpoint
    from textgen.config import ModelConfig, RunConfig, TrainConfig
    from textgen.model import build_model, get_weights

    run_dir = folder / "run"
    run_dir.mkdir()
    shape = ModelConfig(VOCAB, embedding_dim=EMBEDDING, units=512)
    model = build_model(shape)
    Tokenizer([chr(c) for c in range(32, 32 + VOCAB)]).save(run_dir / ckpt.TOKENIZER)
    save_checkpoint(run_dir / ckpt.BEST, Checkpoint(get_weights(model)))
    ckpt.write_config(run_dir, RunConfig(shape, TrainConfig()))
    return run_dir


def _median_times(
    commands: dict[str, tuple[list[str], dict[str, str]]], repeats: int
) -> dict[str, float]:
    """Median wall-clock seconds of each (command, extra environment), run in turns."""
    times: dict[str, list[float]] = {name: [] for name in commands}
    for _ in range(repeats):  # alternate, so drifting load hits all alike
        for name, (command, extra_env) in commands.items():
            start = time.perf_counter()
            env = {**os.environ, **extra_env}
            subprocess.run(command, check=True, capture_output=True, env=env)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def _sample_command(run_dir: Path, length: int) -> list[str]:
    return [sys.executable, "-m", "textgen", "sample", "--checkpoint", str(run_dir),
            "--length", str(length), "--seed", "0"]  # fmt: skip


def process_times(repeats: int) -> None:
    """Whole-process cost of ``textgen sample --length 200`` against importing TensorFlow."""
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = _saved_run(Path(tmp))
        medians = _median_times(
            {
                "textgen sample --length 200": (_sample_command(run_dir, 200), {}),
                'python -c "import tensorflow"': ([sys.executable, "-c", "import tensorflow"], {}),
            },
            repeats,
        )
    base = medians['python -c "import tensorflow"']
    print(f"\nwhole process, median of {repeats} (alternating runs)")
    for name, value in medians.items():
        print(f"{name:44s} {value:8.2f} s {value / base:8.2f}x")


def blas_thread_times(repeats: int, length: int = 20_000) -> None:
    """``textgen sample``, one stream, with the command line's choice of BLAS threads against
    one thread and against all cores. Start-up is included, so short samples understate it."""
    from textgen.cores import usable_cores

    cores = str(usable_cores())
    with tempfile.TemporaryDirectory() as tmp:
        command = _sample_command(_saved_run(Path(tmp)), length)
        runs = {"the command line's choice": {}, "1 thread": {"OPENBLAS_NUM_THREADS": "1"}}
        runs[f"{cores} threads"] = {"OPENBLAS_NUM_THREADS": cores}
        if "OPENBLAS_NUM_THREADS" in os.environ:  # the command line would keep it
            del runs["the command line's choice"]
        medians = _median_times({k: (command, env) for k, env in runs.items()}, repeats)
    base = medians["1 thread"]
    print(f"\ntextgen sample --length {length}, median of {repeats} (alternating runs)")
    print(f"{'BLAS threads':44s} {'seconds':>8s} {'chars/s':>10s} {'x vs 1':>8s}")
    for name, value in medians.items():
        print(f"{name:44s} {value:8.2f} {length / value:10,.0f} {base / value:8.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="time per row (all slices)")
    parser.add_argument("--layers", type=int, nargs="+", default=[1, 2], help="one table each")
    parser.add_argument("--units", type=int, default=512)
    parser.add_argument("--streams", type=int, default=64)
    parser.add_argument("--window-chars", type=int, default=20, help="characters for row 1")
    parser.add_argument("--process-repeats", type=int, default=5, help="0 skips process timing")
    parser.add_argument(
        "--blas-repeats", type=int, default=3, help="0 skips the BLAS thread comparison"
    )
    args = parser.parse_args()
    print(f"BLAS threads: {blas_threads()}; load average before: {os.getloadavg()}")
    for layers in args.layers:
        table(layers, args)
    if args.process_repeats:
        process_times(args.process_repeats)
    if args.blas_repeats:
        blas_thread_times(args.blas_repeats)
    print(f"\nload average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
