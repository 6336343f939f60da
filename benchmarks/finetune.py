"""Fine-tuning from ``base`` against training from nothing, on a panel of small corpora.

Usage::

    apt-get install -y bible-kjv manpages-de      # two of the panel's sources
    python benchmarks/finetune.py --minutes 3 [--only genesis,c-headers] [--out /tmp/panel]
    python benchmarks/finetune.py --only genesis --no-scratch --base-lr 0.002,0.004   # a lever

For each corpus, one after the other with the same budget: ``textgen train C --max-time M``
(the defaults, from nothing) and ``textgen train C --max-time M --init-from base``. Reported: the
best validation loss (nats per character, on the corpus's last 10%), the epochs done, and the
median ``longest_copy`` of 4 samples of 400 characters at temperature 0.8, with the difference
in loss (negative: ``base`` helps). Every corpus is made here from what installs offline and
none comes from ``base``'s own sources, Tiny Shakespeare, pydocs, Debian's fortunes, the
``/usr/share/dict`` word lists or Python's standard library.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

LIMIT = 300_000  # characters per corpus at most


def genesis() -> str:
    """The Book of Genesis, King James Version (English prose; Debian's bible-kjv)."""
    out = subprocess.run(["bible", "-f", "gen1:1-50:26"], capture_output=True, text=True)
    return re.sub(r"^Ge\d+:\d+ ", "", out.stdout, flags=re.M)


def licences() -> str:
    """Free-software licences (English legal prose; Debian's base-files)."""
    names = ["GPL-3", "GFDL-1.3", "Apache-2.0", "MPL-2.0", "LGPL-2.1", "Artistic"]
    return "\n\n".join(Path("/usr/share/common-licenses", n).read_text() for n in names)


def coreutils() -> str:
    """The GNU coreutils manual (English technical prose; the info page)."""
    with gzip.open("/usr/share/info/coreutils.info.gz", "rt", encoding="utf-8") as handle:
        return handle.read()


def german() -> str:
    """German manual pages, rendered as text (Debian's manpages-de)."""
    pages = sorted(Path("/usr/share/man/de/man1").glob("*.1.gz"))
    parts, total = [], 0
    env = dict(os.environ, MANWIDTH="80", LANG="C.UTF-8")
    for page in pages:
        text = subprocess.run(
            ["man", "-l", str(page)], capture_output=True, text=True, env=env
        ).stdout
        text = re.sub(r".\x08", "", text)  # overstrike bold and underline
        parts.append(text)
        total += len(text)
        if total > LIMIT:
            break
    return "\n".join(parts)


def c_headers() -> str:
    """C headers of the system's C library (source code)."""
    files = sorted(Path("/usr/include").glob("*.h"))
    return "\n".join(p.read_text(encoding="utf-8", errors="replace") for p in files)


def packages() -> str:
    """Names and one-line summaries of the installed Debian packages (a list of short lines)."""
    out = subprocess.run(
        ["dpkg-query", "-W", "-f", "${Package}: ${binary:Summary}\n"],
        capture_output=True,
        text=True,
    )
    return out.stdout


PANEL = {
    "genesis": (genesis, "English prose"),
    "licences": (licences, "English prose"),
    "coreutils": (coreutils, "English prose"),
    "german-man": (german, "German"),
    "c-headers": (c_headers, "source code"),
    "packages": (packages, "list"),
}


def build(name: str, folder: Path) -> Path:
    """Write the panel corpus ``name`` (at most LIMIT characters) and return its path."""
    text = PANEL[name][0]()[:LIMIT]
    path = folder / f"{name}.txt"
    path.write_text(text, encoding="utf-8")
    return path


def train(corpus: Path, run_dir: Path, minutes: float, extra: list[str]) -> dict:
    """One ``textgen train`` with a time budget; its best loss, epochs and wall time."""
    command = [sys.executable, "-m", "textgen", "train", str(corpus), "--checkpoint-dir",
               str(run_dir), "--max-time", f"{minutes}m", "--quiet", "--sample-every", "0",
               *extra]  # fmt: skip
    started = time.monotonic()
    out = subprocess.run(command, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"training failed: {out.stderr.strip().splitlines()[-1:]}")
    last = out.stdout.strip().splitlines()[-1]
    epochs = float(re.search(r"after ([\d.]+) epochs", last).group(1))
    loss = float(re.search(r"best loss ([\d.]+) nats", last).group(1))
    return {"loss": loss, "epochs": epochs, "seconds": time.monotonic() - started}


def copies(run_dir: Path) -> float:
    """Median longest copy of 4 samples of 400 characters at temperature 0.8."""
    command = [sys.executable, "-m", "textgen", "sample", "--checkpoint", str(run_dir),
               "--length", "400", "--temperature", "0.8", "--num-samples", "4", "--seed", "0",
               "--format", "jsonl"]  # fmt: skip
    out = subprocess.run(command, capture_output=True, text=True, check=True)
    found = [json.loads(line)["longest_copy"] for line in out.stdout.splitlines()]
    return statistics.median(found)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=3.0)
    parser.add_argument("--only", help="comma-separated corpus names")
    parser.add_argument("--out", type=Path, default=Path("/tmp/textgen-panel"))
    parser.add_argument("--no-scratch", action="store_true", help="only the runs from base")
    parser.add_argument(
        "--base-lr", help="comma-separated peak learning rates for the runs from base, one run each"
    )
    args = parser.parse_args()
    if args.no_scratch or args.base_lr:
        lever(args)
        return
    names = args.only.split(",") if args.only else list(PANEL)
    shutil.rmtree(args.out, ignore_errors=True)
    args.out.mkdir(parents=True)
    rows = []
    for name in names:
        corpus = build(name, args.out)
        size = corpus.stat().st_size
        scratch = train(corpus, args.out / f"{name}-scratch", args.minutes, [])
        scratch["copy"] = copies(args.out / f"{name}-scratch")
        tuned = train(corpus, args.out / f"{name}-base", args.minutes, ["--init-from", "base"])
        tuned["copy"] = copies(args.out / f"{name}-base")
        rows.append((name, PANEL[name][1], size, scratch, tuned))
        print(
            f"{name}: scratch {scratch['loss']:.4f} ({scratch['epochs']:.1f} epochs), "
            f"base {tuned['loss']:.4f} ({tuned['epochs']:.1f} epochs)",
            flush=True,
        )
    print()
    print("| corpus | kind | bytes | scratch: loss, epochs, copy | from base: loss, epochs, copy "
          "| difference |")  # fmt: skip
    print("|---|---|---|---|---|---|")
    for name, kind, size, s, t in rows:
        print(
            f"| {name} | {kind} | {size:,} | {s['loss']:.4f}, {s['epochs']:.1f}, {s['copy']:g} "
            f"| {t['loss']:.4f}, {t['epochs']:.1f}, {t['copy']:g} | {t['loss'] - s['loss']:+.4f} |"
        )


def lever(args) -> None:
    """Runs from base only, one per learning rate (the fine-tuning default when none given)."""
    names = args.only.split(",") if args.only else list(PANEL)
    rates = args.base_lr.split(",") if args.base_lr else [None]
    shutil.rmtree(args.out, ignore_errors=True)
    args.out.mkdir(parents=True)
    print("| corpus | learning rate | loss | epochs |")
    print("|---|---|---|---|")
    for name in names:
        corpus = build(name, args.out)
        for rate in rates:
            extra = ["--init-from", "base"] + (["--learning-rate", rate] if rate else [])
            got = train(corpus, args.out / f"{name}-{rate}", args.minutes, extra)
            print(f"| {name} | {rate or 'default'} | {got['loss']:.4f} | {got['epochs']:.1f} |",
                  flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
