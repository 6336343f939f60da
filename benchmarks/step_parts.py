"""Where a training step's time goes: textgen's LSTM and PyTorch's ``nn.LSTM``, part by part.

Both run the shapes of ``benchmarks/training.py`` (embedding 64, one LSTM of 512 units, batch
64, sequence 100, vocabulary 65 by default), float32 unless ``--plan`` names bfloat16. For each
framework, in interleaved rounds:

- ``forward``: the LSTM over the batch, no gradient (textgen: ``lstm_sequence_from_ids`` with
  the step plan's chains; PyTorch: ``nn.LSTM`` on the looked-up embeddings);
- ``forward + backward``: the same with the gradients of the embedding and LSTM weights, for a
  fixed random upstream gradient;
- ``whole step``: the training step itself, as ``benchmarks/training.py`` times it (softmax
  layer, cross-entropy, optimizer included);
- textgen only, ``weight gradients``: its ``H_prev^T dZ`` products alone, one per chain of depth
  T x B / chains, run concurrently and summed in the plan's chunks, as the step runs them (the
  product that ran at half speed on an AVX2 Zen 3 before the chunks).

From these: the backward pass (``forward + backward`` less ``forward``) and the rest of the step
(``whole step`` less ``forward + backward``): differences of medians, so with few rounds on a
noisy machine they can even read below zero. Each part prints milliseconds per step (median of
the rounds) and, for the recurrent loops and the weight gradients, the GFLOP/s of their
products (2 T B H 4H each; all chains together, so comparable to ``benchmarks/training.py``'s
two-at-once product rate). A part where textgen is slower than PyTorch is where an AVX2 step loses.

    python benchmarks/step_parts.py --rounds 5
    ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2 python benchmarks/step_parts.py
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import numpy as np
from training import (
    build_fast,
    build_torch,
    cpu_heading,
    load_frameworks,
    make_batches,
    parse_args,
    parse_plan,
)


def options() -> argparse.Namespace:
    """This benchmark's options, over ``benchmarks/training.py``'s defaults for the rest."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="rounds, each timing every part")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per part and round")
    for name, default in (("embedding", 64), ("units", 512), ("batch", 64), ("seq", 100)):
        parser.add_argument(f"--{name}", type=int, default=default)
    parser.add_argument("--vocab", type=int, default=65, help="vocabulary size for random data")
    parser.add_argument("--data", choices=["auto", "random"], default="auto")
    parser.add_argument("--threads", type=int, default=2, help="PyTorch's CPU threads")
    parser.add_argument(
        "--plan", help="textgen's step plan, PRECISION:CHAINS:BACKWARD:ROWS (default: this "
        "machine's for float32; see textgen/training/step_plan.py)",
    )  # fmt: skip
    args = parser.parse_args()
    merged = parse_args([])
    vars(merged).update(vars(args), layers=1, dropout=0.0)
    return merged


def median_ms(run: Callable[[], object], repeats: int) -> float:
    """Median wall milliseconds of ``repeats`` calls of ``run`` (after one untimed call)."""
    run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def textgen_parts(args, batches: np.ndarray, vocab: int, plan) -> dict[str, Callable]:
    """Callables for textgen's parts; each runs one step's worth and waits for its result."""
    import tensorflow as tf

    from textgen.training.fast_lstm import _summed_product, lstm_sequence_from_ids

    rng = np.random.default_rng(0)
    emb, hidden = args.embedding, args.units

    def variable(*shape):
        return tf.Variable((rng.standard_normal(shape) * 0.05).astype(np.float32))

    weights = [variable(vocab, emb), variable(emb, 4 * hidden), variable(hidden, 4 * hidden)]
    weights.append(tf.Variable(np.zeros(4 * hidden, np.float32)))
    ids = tf.constant(batches[0, 0])
    upstream = tf.constant(rng.standard_normal((args.batch, args.seq, hidden)).astype(np.float32))
    options = dict(
        chains=plan.chains, matmul_dtype=plan.matmul_dtype(), backward=plan.backward,
        gradient_rows=plan.gradient_rows,
    )  # fmt: skip

    @tf.function
    def forward():
        return lstm_sequence_from_ids(ids, *weights, **options)[0]

    @tf.function
    def backward():
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(lstm_sequence_from_ids(ids, *weights, **options)[0] * upstream)
        return tape.gradient(loss, weights)

    # One product per chain, as the step runs them: concurrent, each of depth T x B / chains.
    depth = args.seq * args.batch // plan.chains
    h_prev = [tf.constant(rng.standard_normal((depth, hidden)), tf.float32)] * plan.chains
    dz = [tf.constant(rng.standard_normal((depth, 4 * hidden)), tf.float32)] * plan.chains
    mm = plan.matmul_dtype() or tf.float32

    @tf.function
    def gradients():
        return [_summed_product(h, d, mm, plan.gradient_rows) for h, d in zip(h_prev, dz)]

    step = build_fast(args, batches, vocab, plan.precision, plan)
    return {
        "forward": lambda: forward().numpy(),
        "forward + backward": lambda: [g.numpy() for g in backward()],
        "whole step": lambda: step.step(0),
        "weight gradients": lambda: [g.numpy() for g in gradients()],
    }


def torch_parts(args, batches: np.ndarray, vocab: int) -> dict[str, Callable] | None:
    """Callables for PyTorch's parts, or None without torch."""
    try:
        import torch
    except ImportError:
        return None
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    embed = torch.nn.Embedding(vocab, args.embedding)
    lstm = torch.nn.LSTM(args.embedding, args.units, batch_first=True)
    ids = torch.from_numpy(batches[0, 0].astype(np.int64))
    upstream = torch.randn(args.batch, args.seq, args.units)

    def forward():
        with torch.no_grad():
            return lstm(embed(ids))[0]

    def backward():
        embed.zero_grad(set_to_none=True)
        lstm.zero_grad(set_to_none=True)
        (lstm(embed(ids))[0] * upstream).sum().backward()

    step = build_torch(args, batches, vocab)
    return {
        "forward": forward,
        "forward + backward": backward,
        "whole step": lambda: step.step(0),
    }


def main() -> None:
    args = options()
    load_frameworks(torch_wanted=True)
    from textgen.training.step_plan import plan_for_this_machine

    plan = parse_plan(args.plan) if args.plan else plan_for_this_machine("float32")
    batches, vocab, source = make_batches(args)
    print(f"{cpu_heading()}; step plan: {plan}; data: {source}")
    print(f"E{args.embedding}, LSTM {args.units}, batch {args.batch}, seq {args.seq}")
    contenders = {"textgen": textgen_parts(args, batches, vocab, plan)}
    theirs = torch_parts(args, batches, vocab)
    if theirs is not None:
        contenders["PyTorch"] = theirs
    times: dict[tuple[str, str], list[float]] = {}
    for _ in range(args.rounds):  # interleaved, so that both see the same machine
        for name, parts in contenders.items():
            for part, run in parts.items():
                times.setdefault((name, part), []).append(median_ms(run, args.repeats))
    ms = {key: statistics.median(values) for key, values in times.items()}
    for name in contenders:
        ms[(name, "backward")] = ms[(name, "forward + backward")] - ms[(name, "forward")]
        ms[(name, "rest of the step")] = ms[(name, "whole step")] - ms[(name, "forward + backward")]
    loop_flops = 2 * args.seq * args.batch * args.units * 4 * args.units
    rates = {"forward": loop_flops, "backward": 2 * loop_flops, "weight gradients": loop_flops}
    order = ["forward", "backward", "weight gradients", "rest of the step", "whole step"]
    print(f"\n{'part':<18} " + " ".join(f"{name + ' ms':>12}" for name in contenders), end="")
    print(f" {'ratio':>7}  textgen's products")
    for part in order:
        cells = [ms.get((name, part)) for name in contenders]
        line = f"{part:<18} " + " ".join(f"{'-':>12}" if c is None else f"{c:12.1f}" for c in cells)
        ratio = "" if None in cells or len(cells) < 2 else f"{cells[1] / cells[0]:6.2f}x"
        line += f" {ratio:>7}"
        if part in rates:
            # backward's products: U dZ in the loop plus H_prev^T dZ, so two loop products' worth
            line += f"  {rates[part] / (ms[('textgen', part)] * 1e-3) / 1e9:,.0f} GFLOP/s"
        print(line)
    print(
        f"(medians of {args.rounds} rounds of {args.repeats}; ratio: PyTorch's time over "
        "textgen's, above 1 where textgen is faster; backward includes the weight gradients)"
    )


if __name__ == "__main__":
    main()
