"""Serving throughput and first-character latency of ``textgen serve`` under concurrent clients.

One model (vocabulary 65, embedding 64, 1 x LSTM 512, random weights), one ``textgen serve`` on
127.0.0.1 (its HTTP process and the model's engine process). For 1, 8 and 64 concurrent
streaming clients (each asks for ``--length`` characters with its own seed), it prints the
aggregate characters per second and the time to the first character (p50, p99), against:

(a) the in-process ``Sampler.generate_batch`` at the same batch size,
(b) the same jobs given straight to an engine process (``EngineProcess``, no HTTP), which
    splits what the server loses to the batch into the engine's share and HTTP's, and
(c) the same requests served one at a time (each client waits for the previous one).

The clients run in this process, on the same cores as the server, as a real load test would on
a small machine. They speak HTTP/1.1 on bare asyncio streams: a full HTTP client library costs
several times the CPU of the server's own streaming work per character (httpx took about 0.7
CPU-seconds to read what a bare client reads in 0.1), and on two shared cores that would measure
the client. numpy's BLAS gets one thread everywhere, so the rows compare the same work.

Each figure is the median of ``--rounds`` rounds, and each round measures the three side by side.
Where this machine's environment forces numpy's BLAS kernel (``benchmarks/kernels.py``), the
whole measurement runs again in a child process with the CPU's own kernel, server included.

    python benchmarks/serving.py --length 500
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse  # noqa: E402
import asyncio  # noqa: E402
import json  # noqa: E402
import socket  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import httpx  # noqa: E402
import numpy as np  # noqa: E402
from kernels import forced, kernel_setting, rerun_with_own_kernel  # noqa: E402

from textgen import run as runs  # noqa: E402
from textgen.checkpoint import Checkpoint, save_checkpoint  # noqa: E402
from textgen.config import ModelConfig, RunConfig, TrainConfig  # noqa: E402
from textgen.sample.options import SamplingOptions  # noqa: E402
from textgen.sample.sampler import Sampler  # noqa: E402
from textgen.serve.batching import Job  # noqa: E402
from textgen.serve.engine_process import EngineProcess  # noqa: E402
from textgen.tokenizer import Tokenizer  # noqa: E402

VOCAB, EMBEDDING, UNITS = 65, 64, 512


def random_run(folder: Path) -> Path:
    """A run directory with random weights in the layout training writes (no TensorFlow)."""
    rng = np.random.default_rng(0)
    run_dir = folder / "bench"
    run_dir.mkdir()
    shapes = {
        "embedding": (VOCAB, EMBEDDING),
        "rnn_0/kernel": (EMBEDDING, 4 * UNITS),
        "rnn_0/recurrent_kernel": (UNITS, 4 * UNITS),
        "rnn_0/bias": (4 * UNITS,),
        "dense/kernel": (UNITS, VOCAB),
        "dense/bias": (VOCAB,),
    }
    weights = {k: (rng.standard_normal(s) * 0.1).astype(np.float32) for k, s in shapes.items()}
    Tokenizer([chr(c) for c in range(32, 32 + VOCAB)]).save(run_dir / runs.TOKENIZER)
    save_checkpoint(run_dir / runs.BEST, Checkpoint(weights))
    shape = ModelConfig(VOCAB, embedding_dim=EMBEDDING, units=UNITS)
    runs.write_config(run_dir, RunConfig(shape, TrainConfig()))
    return run_dir


def start(run_dir: Path, length: int) -> tuple[subprocess.Popen, int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    command = [sys.executable, "-m", "textgen", "serve", str(run_dir), "--port", str(port)]
    command += ["--max-tokens", str(length)]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                return proc, port
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise SystemExit("the server did not start")


async def one(port: int, seed: int, length: int, go: asyncio.Event) -> tuple[float, int]:
    """Stream one completion over a bare HTTP/1.1 connection, opened before ``go`` is set.

    Returns (seconds from sending the request to the first character, characters received).
    """
    body = json.dumps(
        {"model": "bench", "prompt": "THE ", "max_tokens": length, "seed": seed, "stream": True}
    ).encode()
    request = (
        f"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    await go.wait()
    start, first, chars = time.perf_counter(), None, 0
    writer.write(request)
    status = await reader.readline()
    if b" 200 " not in status:
        raise SystemExit(f"the server answered {status!r}")
    try:
        # The body is chunked; SSE lines never span a chunk boundary here, so every line that
        # starts with "data: " is one event (chunk-size lines and blank lines are skipped).
        while line := await reader.readline():
            if line.startswith(b"data: [DONE]"):
                break
            if line.startswith(b"data: {"):
                text = json.loads(line[6:])["choices"][0]["text"]
                if text and first is None:
                    first = time.perf_counter() - start
                chars += len(text)
    finally:
        writer.close()
    return first, chars


async def served(port: int, clients: int, length: int, together: bool):
    """Aggregate chars/s and first-character times of ``clients`` requests."""
    go = asyncio.Event()
    go.set()
    await one(port, 999, 20, go)  # warm up
    start = time.perf_counter()
    if together:
        go = asyncio.Event()
        tasks = [asyncio.create_task(one(port, s, length, go)) for s in range(clients)]
        await asyncio.sleep(0.2)  # every connection is open: the requests leave together
        start = time.perf_counter()
        go.set()
        results = await asyncio.gather(*tasks)
    else:
        results = [await one(port, s, length, go) for s in range(clients)]
    elapsed = time.perf_counter() - start
    firsts = sorted(r[0] for r in results)
    return sum(r[1] for r in results) / elapsed, firsts


def in_process(run_dir: Path, clients: int, length: int) -> float:
    sampler = Sampler.from_checkpoint(run_dir)
    sampler.generate_batch(clients, 20, prime="THE ", seed=1)
    start = time.perf_counter()
    sampler.generate_batch(clients, length, prime="THE ", seed=0)
    return clients * length / (time.perf_counter() - start)


def engine_only(engine: EngineProcess, clients: int, length: int) -> float:
    """Aggregate chars/s of the same jobs submitted to an engine process directly."""
    ids = engine.prompt_ids("THE ")
    jobs = [Job(ids, SamplingOptions(seed=s), max_tokens=length) for s in range(clients)]
    start = time.perf_counter()
    for job in jobs:
        engine.submit(job)
    chars = 0
    for job in jobs:  # they run together: waiting for each in turn ends with the last
        while not job.drained:
            chars += sum(len(piece.text) for piece in job.take(timeout=1.0))
    return chars / (time.perf_counter() - start)


def percentile(values: list[float], q: float) -> float:
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--length", type=int, default=500, help="characters per request")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8, 64])
    parser.add_argument("--rounds", type=int, default=3, help="rounds per client count")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        run_dir = random_run(Path(folder))
        # First, since it ends by itself with this process, where the server's would outlive it.
        engine = EngineProcess(runs.open_run(run_dir), max_streams=max(args.clients))
        proc, port = start(run_dir, args.length)
        print(f"numpy's BLAS kernel variables: {kernel_setting()}")
        try:
            header = f"{'clients':>7} {'served c/s':>11} {'in-proc c/s':>12} {'vs batch':>9}"
            header += f" {'engine c/s':>11} {'vs batch':>9}"
            header += f" {'serial c/s':>11} {'vs serial':>10} {'ttfc p50':>9} {'ttfc p99':>9}"
            print(header)
            for clients in args.clients:
                rows = []
                engine_only(engine, clients, 20)  # warm up
                for _ in range(args.rounds):  # interleaved, so that each round compares alike
                    rate, firsts = asyncio.run(served(port, clients, args.length, True))
                    serial, _ = asyncio.run(served(port, clients, args.length, False))
                    batch = in_process(run_dir, clients, args.length)
                    alone = engine_only(engine, clients, args.length)
                    p50, p99 = statistics.median(firsts), percentile(firsts, 0.99)
                    rows.append((rate, batch, rate / batch, alone, alone / batch, serial))
                    rows[-1] += (rate / serial, p50, p99)
                rate, batch, vs_batch, alone, alone_vs, serial, vs_serial, p50, p99 = (
                    statistics.median(column) for column in zip(*rows, strict=True)
                )
                print(
                    f"{clients:7d} {rate:11,.0f} {batch:12,.0f} {vs_batch:9.2f} "
                    f"{alone:11,.0f} {alone_vs:9.2f} "
                    f"{serial:11,.0f} {vs_serial:10.2f} {p50 * 1e3:7.0f}ms {p99 * 1e3:7.0f}ms"
                )
            print(f"(medians of {args.rounds} rounds; each round measures all four side by side)")
        finally:
            engine.close()
            proc.kill()
            proc.wait()
    if forced():  # the same again, as a user's machine runs it
        rerun_with_own_kernel([])


if __name__ == "__main__":
    main()
