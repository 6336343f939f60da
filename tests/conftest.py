"""Shared fixtures: tiny corpora and a tiny trained run, so the suite stays fast."""

from __future__ import annotations

import contextlib
import random
from pathlib import Path

import pytest

WORDS = [
    "the",
    "quick",
    "brown",
    "fox",
    "jumps",
    "over",
    "a",
    "lazy",
    "dog",
    "while",
    "cats",
    "nap",
    "on",
    "warm",
    "mats",
]


def make_text(n_lines: int = 60, seed: int = 0) -> str:
    """A few thousand characters of word salad with a small alphabet."""
    rng = random.Random(seed)
    lines = [
        " ".join(rng.choice(WORDS) for _ in range(8)).capitalize() + "." for _ in range(n_lines)
    ]
    return "\n".join(lines) + "\n"


TINY = dict(
    epochs=2,
    batch_size=8,
    seq_length=16,
    embedding_dim=4,
    units=8,
    dropout=0.1,
    validation_split=0.1,
    checkpoint_every=3600.0,
)


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    path = tmp_path / "corpus.txt"
    path.write_text(make_text(), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory) -> Path:
    """One tiny run trained once for the whole session (read-only for tests)."""
    from textgen.training.train import train

    root = tmp_path_factory.mktemp("run")
    path = root / "corpus.txt"
    path.write_text(make_text(), encoding="utf-8")
    train(path, run_dir=root / "run", progress=False, echo=lambda _: None, **TINY)
    return root / "run"


API_KEY = "test-key"

from browser import CHROMIUM, FLAGS  # noqa: E402,F401 (browser tests import them from here)


def free_ports(n: int) -> list[int]:
    """``n`` distinct free TCP ports on 127.0.0.1 (all held open until every one is found)."""
    import socket

    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def start_server(
    run_dir: Path,
    *args: str,
    api_key: str | None = API_KEY,
    blas_threads: str | None = "1",
    start_new_session: bool = False,
):
    """Start ``textgen serve`` on a free 127.0.0.1 port; returns (process, base URL).

    ``blas_threads`` is its OPENBLAS_NUM_THREADS; None leaves the choice to the server.
    ``start_new_session``: the server leads a process group of its own (to signal it whole)."""
    import os
    import subprocess
    import sys
    import time
    import urllib.request

    (port,) = free_ports(1)
    command = [sys.executable, "-m", "textgen", "serve", str(run_dir), "--port", str(port)]
    command += ["--api-key", api_key] if api_key else []
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_NUM_THREADS"}
    if blas_threads is not None:
        env["OPENBLAS_NUM_THREADS"] = blas_threads
    proc = subprocess.Popen(
        [*command, *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=start_new_session,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            with urllib.request.urlopen(f"{base}/health", timeout=2) as answer:
                if answer.status == 200:
                    return proc, base
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"textgen serve did not start:\n{proc.communicate()[0]}")
        time.sleep(0.1)


def stop_server(proc) -> None:
    import os

    """Kill a server started by :func:`start_server` (used in finally blocks)."""
    if proc.poll() is None:
        proc.kill()
    output = proc.communicate(timeout=10)[0]
    if os.environ.get("TEXTGEN_SHOW_SERVER"):
        print(output)


@pytest.fixture(scope="session")
def live_server(trained_run):
    """One ``textgen serve`` of ``trained_run`` for the session: (base URL, model id)."""
    limits = ["--max-streams", "48", "--max-tokens", "1000000", "--max-body", "20000"]
    proc, base = start_server(trained_run, *limits)
    try:
        yield base, trained_run.name
    finally:
        stop_server(proc)


@contextlib.contextmanager
def chromium():
    """Debian's Chromium driven by Playwright, closed on exit (skips without Playwright)."""
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS, timeout=30000)
        try:
            yield browser
        finally:
            browser.close()


def watched_page(browser, timeout_ms: int = 15000, **options):
    """A new page that records its console errors in ``page.errors`` and every request's URL
    in ``page.urls``, for the no-error and no-network checks."""
    page = browser.new_page(**options)
    page.set_default_timeout(timeout_ms)
    page.errors, page.urls = [], []
    page.on("console", lambda m: m.type == "error" and page.errors.append(m.text))
    page.on("pageerror", lambda e: page.errors.append(str(e)))
    page.on("request", lambda r: page.urls.append(r.url))
    return page
