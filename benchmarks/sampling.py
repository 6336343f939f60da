"""Characters per second when sampling: the usual Keras recipes against the numpy engine.

Rows, for a model with vocabulary 65, embedding 64 and LSTM layers of 512 units:

1. ``model.predict`` on the last 40 characters for every new character (keras-io / textgenrnn).
2. One stateful ``tf.function`` call per character returning logits' sample and states
   (TensorFlow text-generation tutorial), for 1 stream and for all streams at once.
3. textgen, one stream. 4. textgen, all streams at once.
5. The bare numpy recurrence (``h @ U``, one tanh over the gates, the cell update; no embedding,
   bias, output layer or sampling), the ceiling for 3 and 4.

Each rate is the best of several short trials within ``--seconds``, which keeps it meaningful
when other processes share the CPU; compare ratios within one run, not across runs.

    python benchmarks/sampling.py --seconds 3 --layers 1 2
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable

import numpy as np

from textgen.kernels import RecurrentStack, sample_ids

VOCAB, EMBEDDING, WINDOW = 65, 64, 40


def measure(run: Callable[[int], int], seconds: float, trials: int = 5) -> float:
    """Best rate (units returned by ``run`` per second) over ``trials`` slices of ``seconds``.

    ``run(n)`` does n iterations and returns how many characters they produced.
    """
    run(3)  # warm caches and any tracing before the clock starts
    budget = seconds / trials
    best = 0.0
    for _ in range(trials):
        chars, n, start = 0, 1, time.perf_counter()
        while (elapsed := time.perf_counter() - start) < budget:
            chars += run(n)
            n = min(n * 2, 256)
        best = max(best, chars / elapsed)
    return best


# -- textgen (kept small so they can be pointed at the higher-level sampler) --------------------


def textgen_single_stream(weights: dict[str, np.ndarray], cell: str, seconds: float) -> float:
    """Chars/s for one stream: step, sample, feed the id back."""
    stack = RecurrentStack(weights, cell)
    stack.reset(1)
    rng = np.random.default_rng(0)
    ids = np.zeros(1, np.int64)

    def run(n: int) -> int:
        nonlocal ids
        for _ in range(n):
            ids = sample_ids(stack.step(ids), rng)
        return n

    return measure(run, seconds)


def textgen_streams(
    weights: dict[str, np.ndarray], cell: str, streams: int, seconds: float
) -> float:
    """Total chars/s for ``streams`` streams stepped and sampled together."""
    stack = RecurrentStack(weights, cell)
    stack.reset(streams)
    rng = np.random.default_rng(0)
    ids = np.zeros(streams, np.int64)

    def run(n: int) -> int:
        nonlocal ids
        for _ in range(n):
            ids = sample_ids(stack.step(ids), rng)
        return n * streams

    return measure(run, seconds)


def bare_recurrence(units: int, layers: int, streams: int, seconds: float) -> float:
    """Chars/s of just the LSTM recurrence in numpy's fastest layout (the ceiling)."""
    rng = np.random.default_rng(0)
    gates = 4 * units
    mats = [
        (rng.standard_normal((gates, units * (1 if i == 0 else 2))) * 0.02).astype(np.float32)
        for i in range(layers)
    ]
    h = np.zeros((layers * units, streams), np.float32)
    c = np.zeros((layers * units, streams), np.float32)
    g = np.empty((gates, streams), np.float32)
    i_gate, f_gate, o_gate, candidate = (g[k * units : (k + 1) * units] for k in range(4))
    plan = [
        (
            mats[i],
            h[:units] if i == 0 else h[(i - 1) * units : (i + 1) * units],
            h[i * units : (i + 1) * units],
            c[i * units : (i + 1) * units],
        )
        for i in range(layers)
    ]

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

    return measure(run, seconds)


# -- TensorFlow baselines ---------------------------------------------------------------------


def keras_window_predict(model, seconds: float) -> float:
    """Chars/s regenerating from the last ``WINDOW`` characters with ``model.predict``."""
    rng = np.random.default_rng(0)
    text = list(rng.integers(0, VOCAB, WINDOW))

    def run(n: int) -> int:
        for _ in range(n):
            window = np.array([text[-WINDOW:]], np.int32)
            logits = model.predict(window, verbose=0)[0, -1].astype(np.float64)
            probs = np.exp(logits - logits.max())
            text.append(rng.choice(VOCAB, p=probs / probs.sum()))
        return n

    return measure(run, seconds, trials=max(1, min(5, int(seconds))))


def keras_window_call(model, seconds: float) -> float:
    """As ``keras_window_predict`` but calling ``model(window)`` directly (no predict loop)."""
    rng = np.random.default_rng(0)
    text = list(rng.integers(0, VOCAB, WINDOW))

    def run(n: int) -> int:
        for _ in range(n):
            window = np.array([text[-WINDOW:]], np.int32)
            logits = np.asarray(model(window, training=False))[0, -1].astype(np.float64)
            probs = np.exp(logits - logits.max())
            text.append(rng.choice(VOCAB, p=probs / probs.sum()))
        return n

    return measure(run, seconds)


def tf_one_step(model, streams: int, seconds: float) -> float:
    """Chars/s with one stateful ``tf.function`` call per character, sampling inside TF."""
    import tensorflow as tf

    embedding = model.get_layer("embedding")
    dense = model.get_layer("dense")
    cells = []
    while True:
        try:
            cells.append(model.get_layer(f"rnn_{len(cells)}").cell)
        except ValueError:
            break

    @tf.function
    def one_step(ids, states):
        x = embedding(ids)
        new_states = []
        for cell, state in zip(cells, states, strict=True):
            x, state = cell(x, state)
            new_states.append(state)
        next_ids = tf.random.categorical(dense(x), 1, dtype=tf.int32)[:, 0]
        return next_ids, new_states

    zeros = tf.zeros((streams, cells[0].units))
    states = [[zeros, zeros] if isinstance(cell.state_size, list) else [zeros] for cell in cells]
    ids = tf.zeros((streams,), tf.int32)

    def run(n: int) -> int:
        nonlocal ids, states
        for _ in range(n):
            ids, states = one_step(ids, states)
        ids.numpy()  # the ids are needed in Python each step; this also syncs
        return n * streams

    return measure(run, seconds)


# -- report -----------------------------------------------------------------------------------


def blas_threads() -> str:
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return os.environ.get("OPENBLAS_NUM_THREADS", "default")
    return ", ".join(f"{p['internal_api']}={p['num_threads']}" for p in threadpool_info())


def table(layers: int, units: int, streams: int, args: argparse.Namespace) -> None:
    """Build a model with random weights, time every row and print the table."""
    from textgen.model import build_model, get_weights

    model = build_model(VOCAB, embedding_dim=EMBEDDING, units=units, num_layers=layers)
    weights = get_weights(model)
    secs = args.seconds
    # numpy rows first, while TensorFlow's thread pools have not been woken up yet.
    rows = {
        "3": ("textgen, 1 stream", textgen_single_stream(weights, "lstm", secs)),
        "4": (f"textgen, {streams} streams", textgen_streams(weights, "lstm", streams, secs)),
        "5a": ("bare recurrence, 1 stream", bare_recurrence(units, layers, 1, secs)),
        "5b": (
            f"bare recurrence, {streams} streams",
            bare_recurrence(units, layers, streams, secs),
        ),
        "1": (f"predict, {WINDOW}-char window", keras_window_predict(model, args.window_seconds)),
        "1b": (f"model(window), {WINDOW} chars", keras_window_call(model, secs)),
        "2": ("tf.function per char, 1 stream", tf_one_step(model, 1, secs)),
        "2b": (f"tf.function per char, {streams} streams", tf_one_step(model, streams, secs)),
    }
    ceilings = {"3": "5a", "4": "5b"}
    baseline = rows["2"][1]
    print(f"\n{layers} x LSTM {units}, vocab {VOCAB}, embedding {EMBEDDING}")
    print(f"{'':44s} {'chars/s':>10s} {'x vs 2':>8s} {'of ceiling':>11s}")
    for key in ("1", "1b", "2", "2b", "3", "4", "5a", "5b"):
        label, rate = rows[key]
        share = f"{rate / rows[ceilings[key]][1]:.0%}" if key in ceilings else ""
        print(f"{key + '. ' + label:44s} {rate:10,.0f} {rate / baseline:8.2f} {share:>11s}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="time per measurement")
    parser.add_argument("--layers", type=int, nargs="+", default=[1, 2], help="one table each")
    parser.add_argument("--units", type=int, default=512)
    parser.add_argument("--streams", type=int, default=64)
    parser.add_argument(
        "--window-seconds", type=float, default=None, help="time for row 1 (default --seconds)"
    )
    args = parser.parse_args()
    if args.window_seconds is None:
        args.window_seconds = args.seconds
    print(f"BLAS threads: {blas_threads()}; load average before: {os.getloadavg()}")
    for layers in args.layers:
        table(layers, args.units, args.streams, args)
    print(f"\nload average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
