"""Training throughput, side by side: stock Keras, PyTorch ``nn.LSTM`` and textgen's fast path.

Every contender trains the same network (Embedding -> LSTM layers -> Linear) with Adam and
softmax cross-entropy on the same batches: stock Keras through ``model.fit``, PyTorch in a plain
loop (skipped when torch is not installed; textgen never needs it), and textgen's fast path as a
``tf.function`` step that ``textgen train`` runs (``textgen.training.train.build_train_step``, with
its default Adam and gradient clipping), in float32 and with bfloat16 products
(``--precision bfloat16``), and with any step plans named by ``--plan``. Each is warmed up, then
timed for ``--seconds`` per round, rounds interleaved.

The same rounds time a large matrix product in float32 and in bfloat16 (two at once, one per
core, as the training step's two chains run), and every row shows its share of the float32
limit: chars/s times the FLOPs a character costs, over the float32 product rate. The FLOPs per
character are counted from the shapes, 6 per weight of each layer (2 forward, 4 backward), the
way model FLOPs are usually counted; textgen's first layer skips part of that work by projecting
the embedding table, so its share can read slightly high.

Other processes share the CPU, so compare the ratios of one run rather than absolute numbers
across runs; each measurement shows how much of the CPU other processes took meanwhile.
TensorFlow's thread pools are set as ``textgen train`` sets them (``textgen.backend``), for
stock Keras too, since the two share the process.

    python benchmarks/training.py --seconds 20
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
CORPUS = REPO.parent / "shared" / "corpora" / "tinyshakespeare.txt"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="seconds per measurement")
    parser.add_argument("--rounds", type=int, default=3, help="measurements per contender")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps before each timing")
    parser.add_argument("--embedding", type=int, default=64)
    parser.add_argument("--units", type=int, default=512)
    parser.add_argument("--layers", type=int, default=1)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--seq", type=int, default=100)
    parser.add_argument("--dropout", type=float, default=0.0)
    parser.add_argument("--vocab", type=int, default=65, help="vocabulary size for random data")
    parser.add_argument(
        "--data", choices=("auto", "random"), default="auto", help="auto: corpus if present"
    )
    parser.add_argument(
        "--only",
        default="keras,torch,fast,bf16",
        help="comma-separated subset of keras, torch, fast, bf16",
    )
    parser.add_argument("--threads", type=int, default=2, help="PyTorch's CPU threads")
    parser.add_argument(
        "--plan",
        action="append",
        default=[],
        metavar="PRECISION:CHAINS:BACKWARD:ROWS",
        help="also time textgen's step with this step plan instead of the machine's own, e.g. "
        "float32:2:whole:1024 (see textgen/training/step_plan.py); repeatable",
    )
    return parser.parse_args(argv)


def parse_plan(text: str):
    """A ``--plan`` value as a ``StepPlan``."""
    from textgen.training.step_plan import StepPlan

    try:
        precision, chains, backward, rows = text.split(":")
        return StepPlan(precision, int(chains), backward, int(rows))
    except ValueError:
        raise SystemExit(f"--plan takes PRECISION:CHAINS:BACKWARD:ROWS, got {text!r}") from None


def make_batches(args: argparse.Namespace, count: int = 16) -> tuple[np.ndarray, int, str]:
    """Return ``count`` (inputs, targets) pairs stacked as (count, 2, batch, seq) and the vocab."""
    rng = np.random.default_rng(0)
    if args.data == "auto" and CORPUS.exists():
        text = CORPUS.read_text(encoding="utf-8")
        chars = sorted(set(text))
        lookup = {ch: i for i, ch in enumerate(chars)}
        ids = np.fromiter((lookup[ch] for ch in text), dtype=np.int32, count=len(text))
        vocab, source = len(chars), f"{CORPUS.name} ({len(text):,} chars)"
    else:
        ids = rng.integers(0, args.vocab, size=1_000_000, dtype=np.int32)
        vocab, source = args.vocab, "random ids"
    starts = rng.integers(0, len(ids) - args.seq - 1, size=(count, args.batch))
    windows = np.stack([ids[s : s + args.seq + 1] for s in starts.ravel()])
    windows = windows.reshape(count, args.batch, args.seq + 1)
    batches = np.stack([windows[:, :, :-1], windows[:, :, 1:]], axis=1)
    return batches, vocab, source


class Stepper:
    """Times a ``step(i)`` function; the step index keeps counting across measurements."""

    def __init__(self, step: Callable[[int], None], chars_per_step: float) -> None:
        self.step = step
        self.chars_per_step = chars_per_step
        self.done = 0

    def __call__(self, seconds: float, warmup: int = 1) -> float:
        """Run ``warmup`` untimed steps, then steps for ``seconds``; return chars/s."""
        for _ in range(warmup):
            self.step(self.done)
            self.done += 1
        count, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            self.step(self.done)
            self.done += 1
            count += 1
        return count * self.chars_per_step / (time.perf_counter() - start)


def build_keras(args: argparse.Namespace, batches: np.ndarray, vocab: int) -> Callable:
    """Stock Keras: ``model.fit`` over a repeating dataset, stopped by a timing callback."""
    import keras
    import tensorflow as tf

    from textgen.model import build_model

    model = build_model(
        vocab,
        embedding_dim=args.embedding,
        units=args.units,
        num_layers=args.layers,
        dropout=args.dropout,
    )
    model.compile(
        optimizer=keras.optimizers.Adam(),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile=False,
    )
    data = tf.data.Dataset.from_tensor_slices((batches[:, 0], batches[:, 1])).repeat()

    class Timer(keras.callbacks.Callback):
        """Starts the clock after ``warmup`` batches and stops fit after ``seconds``."""

        def __init__(self, seconds: float, warmup: int) -> None:
            super().__init__()
            self.seconds, self.warmup = seconds, warmup
            self.start, self.end, self.steps = 0.0, 0.0, 0

        def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
            now = time.perf_counter()
            if batch + 1 == self.warmup:
                self.start = now
            elif batch + 1 > self.warmup:
                self.steps += 1
                if now - self.start >= self.seconds:
                    self.end = now
                    self.model.stop_training = True

    def run(seconds: float, warmup: int = 1) -> float:
        timer = Timer(seconds, max(warmup, 1))
        model.fit(
            data, epochs=1, steps_per_epoch=10**9, callbacks=[timer], verbose=0, shuffle=False
        )
        # Timed from the end of the warm-up batch to the end of the last one, so the set-up and
        # tear-down of each fit() call stay out of the rate.
        return timer.steps * args.batch * args.seq / (timer.end - timer.start)

    return run


def build_torch(args: argparse.Namespace, batches: np.ndarray, vocab: int) -> Callable | None:
    """PyTorch: Embedding -> ``nn.LSTM`` -> Linear with Adam, in a plain training loop."""
    try:
        import torch
    except ImportError:
        return None
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = torch.nn.Embedding(vocab, args.embedding)
            self.lstm = torch.nn.LSTM(
                args.embedding, args.units, num_layers=args.layers, batch_first=True
            )
            self.drop = torch.nn.Dropout(args.dropout)
            self.out = torch.nn.Linear(args.units, vocab)

        def forward(self, ids: torch.Tensor) -> torch.Tensor:
            x, _ = self.lstm(self.embed(ids))
            return self.out(self.drop(x))

    net = Net()
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    data = torch.from_numpy(batches.astype(np.int64))

    def step(i: int) -> None:
        inputs, targets = data[i % len(data), 0], data[i % len(data), 1]
        optimizer.zero_grad(set_to_none=True)
        logits = net(inputs)
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, vocab), targets.reshape(-1))
        loss.backward()
        optimizer.step()

    return Stepper(step, args.batch * args.seq)


def build_fast(
    args: argparse.Namespace, batches: np.ndarray, vocab: int, precision: str = "float32", plan=None
) -> Callable:
    """textgen's own training step (``textgen.training.train.build_train_step``), default optimizer
    and weight decay; with the machine's step plan for ``precision`` unless ``plan`` is given."""
    import tensorflow as tf

    from textgen.config import Noise
    from textgen.model import build_model
    from textgen.training.step_plan import plan_for_this_machine
    from textgen.training.train import TrainConfig, build_train_step, make_optimizer

    model = build_model(
        vocab,
        embedding_dim=args.embedding,
        units=args.units,
        num_layers=args.layers,
        dropout=args.dropout,
    )
    optimizer = make_optimizer(TrainConfig())
    optimizer.build(model.trainable_variables)
    step_fn = build_train_step(
        model,
        optimizer,
        Noise(args.dropout),
        plan=plan or plan_for_this_machine(precision),
        weight_decay=TrainConfig().weight_decay,
    )
    data = [(tf.constant(b[0]), tf.constant(b[1])) for b in batches]
    lr = tf.constant(TrainConfig().learning_rate, tf.float32)

    def step(i: int) -> None:
        inputs, targets = data[i % len(data)]
        step_fn(inputs, targets, tf.constant([i, 0], tf.int32), lr).numpy()

    return Stepper(step, args.batch * args.seq)


def build_bf16(args: argparse.Namespace, batches: np.ndarray, vocab: int) -> Callable:
    """textgen's training step with bfloat16 products, as ``--precision bfloat16`` runs it."""
    return build_fast(args, batches, vocab, "bfloat16")


def flops_per_char(args: argparse.Namespace, vocab: int) -> float:
    """Training FLOPs per character: 6 per weight (forward 2, backward 4) of every layer."""
    weights = 0
    inputs = args.embedding
    for _ in range(args.layers):
        weights += (inputs + args.units) * 4 * args.units
        inputs = args.units
    weights += args.units * vocab
    return 6.0 * weights


# A product of the size the step's big products reach: (2048 x 512) @ (512 x 2048).
GEMM_SHAPE = (2048, 512, 2048)


def build_gemm(dtype_name: str) -> Callable:
    """Times two independent ``GEMM_SHAPE`` products at once; returns GFLOP/s, not chars/s."""
    import tensorflow as tf

    dtype = tf.as_dtype(dtype_name)
    m, k, n = GEMM_SHAPE
    rng = np.random.default_rng(1)
    pairs = [
        (tf.constant(rng.normal(size=(m, k)), dtype), tf.constant(rng.normal(size=(k, n)), dtype))
        for _ in range(2)
    ]
    repeats = 8

    @tf.function
    def products():
        def chain(a, b):
            # A loop, so grappler cannot merge the repeated products into one.
            def body(i, total):
                return i + 1, total + tf.cast(tf.matmul(a, b)[0, 0], tf.float32)

            return tf.while_loop(lambda i, _: i < repeats, body, (0, 0.0))[1]

        return [chain(a, b) for a, b in pairs]

    def step(i: int) -> None:
        for value in products():
            value.numpy()

    return Stepper(step, 2 * repeats * 2 * m * k * n / 1e9)


class LoadMeter:
    """Estimates how busy other processes kept the CPU, from /proc/stat minus our own CPU time."""

    def __init__(self) -> None:
        self.start = self._sample()

    @staticmethod
    def _sample() -> tuple[float, float, float] | None:
        try:
            with open("/proc/stat", encoding="ascii") as stat:
                fields = [int(v) for v in stat.readline().split()[1:]]
        except (OSError, ValueError):
            return None
        # user, nice, system, irq, softirq, steal; guest time is already inside user.
        busy = sum(fields[:3]) + sum(fields[5:8])
        own = os.times()
        return busy / os.sysconf("SC_CLK_TCK"), own.user + own.system, time.monotonic()

    def other_load(self) -> float | None:
        """Fraction of all cores used by other processes since construction, or None."""
        end = self._sample()
        if self.start is None or end is None:
            return None
        busy, own, wall = (b - a for a, b in zip(self.start, end, strict=True))
        return max(0.0, busy - own) / (wall * (os.cpu_count() or 1))


CONTENDERS = {
    "keras": ("stock Keras LSTM (model.fit)", build_keras),
    "torch": ("PyTorch nn.LSTM", build_torch),
    "fast": ("textgen fast_lstm", build_fast),
    "bf16": ("textgen fast_lstm bfloat16", build_bf16),
}
GEMMS = {"float32": "float32 products (GFLOP/s)", "bfloat16": "bfloat16 products (GFLOP/s)"}


def load_frameworks(torch_wanted: bool):
    """Import PyTorch's optimizer machinery (when wanted), then TensorFlow as textgen sets it up;
    returns ``tf``."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.path.insert(0, str(REPO))
    if torch_wanted:
        # PyTorch's optimizers load torch._dynamo (and triton) on first use; loaded after
        # TensorFlow, that import crashed the process (torch 2.14, TF 2.21); before, it is fine.
        with contextlib.suppress(ImportError):
            import torch._dynamo  # noqa: F401
    # Importing textgen's backend sets TensorFlow's thread pools the way ``textgen train`` runs
    # them; stock Keras shares the process and so gets the same setting (it is faster with it).
    from textgen.backend import tf

    return tf


def cpu_heading() -> str:
    """This machine's CPU class, and the oneDNN cap when ``ONEDNN_MAX_CPU_ISA`` sets one."""
    from textgen.precision import cpu_class, machine_flags

    cap = os.environ.get("ONEDNN_MAX_CPU_ISA")
    return f"CPU class {cpu_class(machine_flags())}" + (
        f" (oneDNN held to {cap} by ONEDNN_MAX_CPU_ISA)" if cap else ""
    )


def main(argv: list[str] | None = None) -> None:
    """Run the selected contenders in interleaved rounds and print chars/s and ratios."""
    args = parse_args(argv)
    tf = load_frameworks("torch" in args.only.split(","))
    threading = tf.config.threading
    tf_threads = (
        f"TensorFlow {threading.get_intra_op_parallelism_threads()} intra-op / "
        f"{threading.get_inter_op_parallelism_threads()} inter-op threads"
    )

    from textgen.precision import bfloat16_blocked
    from textgen.training.step_plan import plan_for_this_machine

    blocked = bfloat16_blocked()
    bf16_plan = "skipped" if blocked else plan_for_this_machine("bfloat16")
    print(
        f"{cpu_heading()}; textgen's step: {plan_for_this_machine('float32')} (float32 rows), "
        f"{bf16_plan} (bfloat16 rows)"
    )
    if blocked:  # they would abort the process
        print(f"bfloat16 rows skipped: {blocked}")
    gemms = {k: v for k, v in GEMMS.items() if not (blocked and k == "bfloat16")}
    batches, vocab, source = make_batches(args)
    print(
        f"config: embedding {args.embedding}, LSTM {args.units} x {args.layers}, "
        f"batch {args.batch}, seq {args.seq}, vocab {vocab}, dropout {args.dropout}; "
        f"data: {source}; {args.rounds} rounds of {args.seconds:g}s per contender, "
        f"PyTorch {args.threads} threads, {tf_threads}"
    )
    runners: dict[str, Callable] = {}
    for key in args.only.split(","):
        if blocked and key == "bf16":
            continue
        name, build = CONTENDERS[key]
        runner = build(args, batches, vocab)
        if runner is None:
            print(f"{name}: skipped (import torch failed; torch is not a textgen dependency)")
            continue
        runner(0.0, warmup=args.warmup)
        runners[name] = runner
    for text in args.plan:
        plan = parse_plan(text)
        if blocked and plan.precision == "bfloat16":
            raise SystemExit(f"--plan {text}: {blocked}")
        runner = build_fast(args, batches, vocab, plan=plan)
        runner(0.0, warmup=args.warmup)
        runners[f"textgen plan {text}"] = runner
    for dtype_name, name in gemms.items():
        runners[name] = build_gemm(dtype_name)
        runners[name](0.0, warmup=args.warmup)

    # Interleaving the rounds spreads slow spells caused by other processes over every contender.
    rates: dict[str, list[float]] = {name: [] for name in runners}
    for round_no in range(args.rounds):
        parts = []
        for name, runner in runners.items():
            meter = LoadMeter()
            rates[name].append(runner(args.seconds, warmup=args.warmup))
            other = meter.other_load()
            load = "" if other is None else f" (others {other:.0%})"
            parts.append(f"{name} {rates[name][-1]:,.0f}{load}")
        print(f"round {round_no + 1}: " + ", ".join(parts), flush=True)
    print("(others N%: CPU share taken by other processes or the hypervisor; above ~10% skews")
    print(" the ratios, PyTorch's the most)")
    medians = {name: float(np.median(r)) for name, r in rates.items()}
    gflops = {dtype_name: medians.pop(name) for dtype_name, name in gemms.items()}
    torch_rate = medians.get(CONTENDERS["torch"][0])
    keras_rate = medians.get(CONTENDERS["keras"][0])
    fast_rate = medians.get(CONTENDERS["fast"][0])
    per_char = flops_per_char(args, vocab)
    limit = gflops["float32"] * 1e9 / per_char
    m, k, n = GEMM_SHAPE
    f32, bf16 = gflops["float32"], gflops.get("bfloat16")
    bf16_part = "" if bf16 is None else f", bfloat16 {bf16:,.0f} GFLOP/s ({bf16 / f32:.2f}x)"
    print(f"\nproducts ({m}x{k} @ {k}x{n}, two at once): float32 {f32:,.0f} GFLOP/s{bf16_part}")
    print(
        f"training costs {per_char / 1e6:.2f} MFLOP per character: the float32 limit is "
        f"{limit:,.0f} chars/s"
    )
    w = max(30, *map(len, medians))  # name column
    header = f"{'name':<{w}} {'chars/s':>10} {'vs PyTorch':>11} {'vs Keras':>9} {'vs float32':>11}"
    print(f"\n{header} {'of limit':>9}  (medians)")
    for name, rate in medians.items():
        vs_torch = f"{rate / torch_rate:.2f}x" if torch_rate else "-"
        vs_keras = f"{rate / keras_rate:.2f}x" if keras_rate else "-"
        vs_fast = f"{rate / fast_rate:.2f}x" if fast_rate else "-"
        share = f"{rate / limit:.0%}"
        print(f"{name:<{w}} {rate:>10,.0f} {vs_torch:>11} {vs_keras:>9} {vs_fast:>11} {share:>9}")
    print("(of limit: chars/s over the float32 limit; bfloat16 rows may pass 100%)")


if __name__ == "__main__":
    main()
