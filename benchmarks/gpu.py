"""Training on a GPU: Keras's cuDNN LSTM path against textgen's CPU path and PyTorch ``nn.LSTM``.

Run it on a machine with a CUDA GPU that TensorFlow (and, for the third line, PyTorch) can see.
It times, in characters per second of training, on the same random batches:

- ``cudnn``: ``textgen.training.train.build_train_step(..., stock=True)`` on the GPU, the step that
  ``textgen train --device gpu`` (or ``auto`` with a GPU) runs: LSTM layers as
  ``keras.layers.LSTM``, which runs the cuDNN kernel;
- ``fast-gpu``: textgen's hand-written step (``--device cpu``'s path) placed on the GPU, to
  show that it has no GPU advantage;
- ``cpu``: the hand-written step on the CPU, as ``textgen train`` runs it without a GPU;
- ``torch``: a PyTorch ``nn.LSTM`` network of the same shape with Adam, on the GPU (skipped
  when torch or its CUDA is missing).

Each contender is warmed up, then timed for ``--seconds``; the ratios are to ``cpu``.

    python benchmarks/gpu.py --units 512 --batch 64 --seconds 20
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--embedding", type=int, default=64)
    parser.add_argument("--units", type=int, default=512)
    parser.add_argument("--layers", type=int, default=1)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--seq", type=int, default=100)
    parser.add_argument("--vocab", type=int, default=65)
    parser.add_argument("--only", default="cudnn,fast-gpu,cpu,torch")
    return parser.parse_args(argv)


def batches(args: argparse.Namespace, count: int = 8) -> list[tuple[np.ndarray, np.ndarray]]:
    """``count`` random (inputs, targets) int32 batches."""
    rng = np.random.default_rng(0)
    shape = (args.batch, args.seq)
    return [
        (
            rng.integers(0, args.vocab, shape).astype(np.int32),
            rng.integers(0, args.vocab, shape).astype(np.int32),
        )
        for _ in range(count)
    ]


def timed(step, data, args: argparse.Namespace, sync) -> float:
    """Characters per second of ``step(x, y)`` over ``data``, after a warm-up."""
    for i in range(args.warmup):
        step(*data[i % len(data)])
    sync()
    steps, started = 0, time.perf_counter()
    while time.perf_counter() - started < args.seconds:
        step(*data[steps % len(data)])
        steps += 1
    sync()
    return steps * args.batch * args.seq / (time.perf_counter() - started)


def textgen_rate(args, data, device: str, stock: bool) -> float:
    """textgen's training step (``stock``: the Keras/cuDNN path) on ``device``."""
    from textgen.backend import keras, tf
    from textgen.config import TrainConfig
    from textgen.model import build_model
    from textgen.training.train import build_train_step, make_optimizer

    config = TrainConfig(
        embedding_dim=args.embedding, units=args.units, num_layers=args.layers, dropout=0.0
    )
    with tf.device(device):
        keras.utils.set_random_seed(0)
        model = build_model(config.model(args.vocab))
        optimizer = make_optimizer(config)
        optimizer.build(model.trainable_variables)
        step = build_train_step(model, optimizer, stock=stock)
        seed, lr = tf.constant([0, 0], tf.int32), tf.constant(1e-3)
        tensors = [(tf.constant(x), tf.constant(y)) for x, y in data]
        last = {}

        def run(x, y):
            last["loss"] = step(x, y, seed, lr)

        return timed(run, tensors, args, lambda: last and float(last["loss"]))


def torch_rate(args, data) -> float | None:
    """The same network in PyTorch on the GPU; None without torch's CUDA."""
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    device = torch.device("cuda")

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.embedding = torch.nn.Embedding(args.vocab, args.embedding)
            self.lstm = torch.nn.LSTM(
                args.embedding, args.units, num_layers=args.layers, batch_first=True
            )
            self.dense = torch.nn.Linear(args.units, args.vocab)

        def forward(self, ids):
            out, _ = self.lstm(self.embedding(ids))
            return self.dense(out)

    net = Net().to(device)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    loss_fn = torch.nn.CrossEntropyLoss()
    tensors = [
        (torch.from_numpy(x).long().to(device), torch.from_numpy(y).long().to(device))
        for x, y in data
    ]

    def step(x, y):
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(net(x).reshape(-1, args.vocab), y.reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 5.0)
        optimizer.step()

    return timed(step, tensors, args, torch.cuda.synchronize)


def main(argv: list[str] | None = None) -> None:
    """Time the contenders and print characters per second and ratios to the CPU path."""
    args = parse_args(argv)
    from textgen.backend import tf

    gpus = tf.config.list_logical_devices("GPU")
    if not gpus:
        raise SystemExit("TensorFlow sees no GPU: run this on a machine with a CUDA GPU")
    data = batches(args)
    only = set(args.only.split(","))
    rates: dict[str, float | None] = {}
    if "cudnn" in only:
        rates["cudnn"] = textgen_rate(args, data, gpus[0].name, stock=True)
    if "fast-gpu" in only:
        rates["fast-gpu"] = textgen_rate(args, data, gpus[0].name, stock=False)
    if "cpu" in only:
        rates["cpu"] = textgen_rate(args, data, "/CPU:0", stock=False)
    if "torch" in only:
        rates["torch"] = torch_rate(args, data)
    print(
        f"units {args.units}, layers {args.layers}, batch {args.batch}, seq {args.seq}, "
        f"GPU {gpus[0].name}"
    )
    base = rates.get("cpu")
    for name, rate in rates.items():
        if rate is None:
            print(f"{name:>9}: skipped (no torch with CUDA)")
            continue
        ratio = f", {rate / base:.2f}x the CPU path" if base else ""
        print(f"{name:>9}: {rate:12,.0f} chars/s{ratio}")


if __name__ == "__main__":
    main()
