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
6. numpy's own ``(streams, units) @ (units, 4 units)`` product alone, per layer: the lower ceiling
   for 3 (6a) and 4 (6b). Rows 3 and 4 show their share of both.

After the tables: ``textgen sample`` as a whole process against ``import tensorflow``, and the
thread-choice rows: ``textgen sample --num-samples 64`` (whole processes, start-up included) with
the command line's own choice of BLAS threads (the cores idle over 50 ms before numpy loads)
against fixed 1 and 2 threads, on the machine as it is and with one core kept busy by a spinning
process pinned to it. Those rows, and the tables, run twice: with numpy's BLAS kernel as this
machine's environment sets it (``OPENBLAS_CORETYPE``, ``OPENBLAS_L2_SIZE``) and, in child
processes only, with both unset together so OpenBLAS picks the CPU's own kernel
(``benchmarks/kernels.py``). The goals: on the quiet
machine the choice reaches 0.9x the best fixed count; with a core busy it is no slower than one
thread. The machine is shared, so "quiet" means whatever else runs meanwhile (the load average
is printed).

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
from kernels import forced, kernel_setting, own_kernel_env, rerun_with_own_kernel

from textgen.sample.sampler import Sampler
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


def bare_product(units: int, layers: int, streams: int) -> Runner:
    """numpy's ``(streams, units) @ (units, 4 units)`` product, once per layer: nothing else."""
    rng = np.random.default_rng(0)
    h = np.zeros((streams, units), np.float32)
    mat = (rng.standard_normal((units, 4 * units)) * 0.02).astype(np.float32)
    out = np.empty((streams, 4 * units), np.float32)

    def run(n: int) -> int:
        for _ in range(n * layers):
            np.matmul(h, mat, out=out)
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
        "6a": "bare product, 1 stream",
        "6b": f"bare product, {streams} streams",
    }
    rates = best_rates(
        {
            "3": textgen_single_stream(Sampler(weights, tokenizer, cell="lstm")),
            "4": textgen_streams(Sampler(weights, tokenizer, cell="lstm"), streams),
            "5a": bare_recurrence(units, layers, 1),
            "5b": bare_recurrence(units, layers, streams),
            "6a": bare_product(units, layers, 1),
            "6b": bare_product(units, layers, streams),
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

    ceilings = {"3": ("5a", "6a"), "4": ("5b", "6b")}
    print(f"\n{layers} x LSTM {units}, vocab {VOCAB}, embedding {EMBEDDING}")
    print(f"{'':44s} {'chars/s':>10s} {'x vs 2':>8s} {'of 5':>6s} {'of 6':>6s}")
    for key, label in labels.items():
        shares = [f"{rates[key] / rates[c]:.2f}x" for c in ceilings.get(key, ())] or ["", ""]
        line = f"{key + '. ' + label:44s} {rates[key]:10,.0f} {rates[key] / rates['2']:8.2f}"
        print(f"{line} {shares[0]:>6s} {shares[1]:>6s}")


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
    commands: dict[str, tuple[list[str], dict[str, str]]], repeats: int, inherit: bool = True
) -> dict[str, float]:
    """Median wall-clock seconds of each (command, environment), run in turns. The environment
    adds to this process's own, or with ``inherit=False`` is the whole of it."""
    times: dict[str, list[float]] = {name: [] for name in commands}
    for _ in range(repeats):  # alternate, so drifting load hits all alike
        for name, (command, extra_env) in commands.items():
            start = time.perf_counter()
            env = {**os.environ, **extra_env} if inherit else extra_env
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


SPIN = "import os, sys\nos.sched_setaffinity(0, {int(sys.argv[1])})\nwhile True:\n    pass\n"


def _kernel(env: dict[str, str]) -> str:
    """The OpenBLAS kernel numpy loads under ``env``, as threadpoolctl reports it."""
    code = (
        "import numpy, threadpoolctl\n"
        "print(threadpoolctl.threadpool_info()[0].get('architecture', '?'))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=False
    )
    return done.stdout.strip() or "unknown"


def _choice(env: dict[str, str]) -> str:
    """What the command line would choose right now (the same measurement, in a child)."""
    code = "from textgen.cores import blas_threads; print(blas_threads())"
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    return done.stdout.strip()


def thread_choice_times(repeats: int, length: int, streams: int = 64) -> None:
    """``textgen sample --num-samples 64`` with the command line's choice of BLAS threads
    against fixed 1 and 2, quiet and with one core busy, under both BLAS kernels."""
    from textgen.cores import usable_cpus

    base_env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_NUM_THREADS"}
    own_env = own_kernel_env(base_env)
    kernels = {"as set here": base_env, "CPU's own (both unset)": own_env}
    if not forced():
        kernels = {"CPU's own (OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE not set here)": own_env}
    busy_cpu = max(usable_cpus())
    with tempfile.TemporaryDirectory() as tmp:
        command = _sample_command(_saved_run(Path(tmp)), length)
        command += ["--num-samples", str(streams), "--output", os.devnull]
        for kernel, env in kernels.items():
            setting = kernel_setting(env)
            print(f"\nBLAS kernel {kernel}: {_kernel(env)} ({setting})")
            print(f"textgen sample --num-samples {streams} --length {length}, "
                  f"median of {repeats} (alternating runs)")  # fmt: skip
            print(f"{'':13s} {'BLAS threads':24s} {'seconds':>8s} {'chars/s':>10s} "
                  f"{'x vs 1':>7s} {'x vs best':>9s}")  # fmt: skip
            for load in ("quiet", "1 core busy"):
                spinner = None
                if load != "quiet":
                    spinner = subprocess.Popen([sys.executable, "-c", SPIN, str(busy_cpu)])
                    time.sleep(0.5)  # let it take its core
                try:
                    runs = {
                        "the command line's choice": (command, env),
                        "1 thread": (command, {**env, "OPENBLAS_NUM_THREADS": "1"}),
                        "2 threads": (command, {**env, "OPENBLAS_NUM_THREADS": "2"}),
                    }
                    choices = [_choice(env) for _ in range(repeats)]
                    medians = _median_times(runs, repeats, inherit=False)
                finally:
                    if spinner is not None:
                        spinner.kill()
                        spinner.wait()
                one = medians["1 thread"]
                best = min(medians["1 thread"], medians["2 threads"])
                for name, value in medians.items():
                    label = name
                    if name == "the command line's choice":
                        label = f"choice ({'/'.join(choices)})"
                    chars = streams * length / value
                    print(f"{load:13s} {label:24s} {value:8.2f} {chars:10,.0f} "
                          f"{one / value:7.2f} {best / value:9.2f}")  # fmt: skip
                auto = medians["the command line's choice"]
                goal = ("x best fixed (goal >= 0.90)", best) if load == "quiet" else (
                    "x 1 thread (goal >= 1.00)", one)  # fmt: skip
                print(f"{load:13s} the choice: {goal[1] / auto:.2f}{goal[0]}")
            print(f"load average now: {os.getloadavg()}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="time per row (all slices)")
    parser.add_argument(
        "--layers", type=int, nargs="*", default=[1, 2], help="one table each; none skips them"
    )
    parser.add_argument("--units", type=int, default=512)
    parser.add_argument("--streams", type=int, default=64)
    parser.add_argument("--window-chars", type=int, default=20, help="characters for row 1")
    parser.add_argument("--process-repeats", type=int, default=5, help="0 skips process timing")
    parser.add_argument(
        "--blas-repeats", type=int, default=3, help="0 skips the thread-choice rows"
    )
    parser.add_argument(
        "--blas-length", type=int, default=3000, help="characters per stream, thread-choice rows"
    )
    args = parser.parse_args()
    print(
        f"BLAS threads: {blas_threads()}; kernel variables: {kernel_setting()}; "
        f"load average before: {os.getloadavg()}"
    )
    for layers in args.layers:
        table(layers, args)
    if args.layers and forced():  # the tables once more, as a user's machine runs them
        rerun_with_own_kernel(["--process-repeats", "0", "--blas-repeats", "0"])
    if args.process_repeats:
        process_times(args.process_repeats)
    if args.blas_repeats:
        thread_choice_times(args.blas_repeats, args.blas_length)
    print(f"\nload average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
