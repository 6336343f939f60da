"""Debian's Chromium and the flags every browser test and benchmark launches it with: headless,
and nothing that reaches for the network on its own. No pytest here, so benchmarks import it."""

CHROMIUM = "/usr/bin/chromium"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
