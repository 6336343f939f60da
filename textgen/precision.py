"""The arithmetic of training's large matrix products: float32, or bfloat16 where that is faster.

``--precision bfloat16`` gives the LSTM's large products (``textgen.training.fast_lstm``) bfloat16
operands with float32 accumulation; the weights, the cell state, the optimizer and the loss stay
float32. ``auto`` (the default) picks bfloat16 only where the hardware multiplies it natively: a
GPU, or a CPU with AVX512-BF16 or AMX, with TensorFlow's oneDNN kernels on. With oneDNN turned
off (``TF_ENABLE_ONEDNN_OPTS=0``) the same products measured 1.4-1.7x slower in bfloat16 than in
float32 at the training step's shapes; a CPU without those instructions has to widen bfloat16 in
software as well, so ``auto`` keeps float32 there.

This module imports neither numpy nor TensorFlow, so the command line and ``config`` can read
``PRECISIONS`` for free; ``textgen.training.step_plan`` asks for GPUs.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

PRECISIONS = ("auto", "float32", "bfloat16")
BF16_CPU_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})  # /proc/cpuinfo names
CPUINFO = Path("/proc/cpuinfo")


def cpu_flags(cpuinfo: str) -> frozenset[str]:
    """The feature flags named on the ``flags`` lines of ``/proc/cpuinfo``'s text."""
    flags: set[str] = set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            flags.update(value.split())
    return frozenset(flags)


# What oneDNN may use under each ONEDNN_MAX_CPU_ISA cap, as the /proc/cpuinfo flags it hides.
_AVX512 = frozenset({"avx512f", "avx512bw", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_tile"})
_ISA_CAPS = {
    "SSE41": _AVX512 | {"avx2"},
    "AVX": _AVX512 | {"avx2"},
    "AVX2": _AVX512,
    "AVX2_VNNI": _AVX512,
    "AVX2_VNNI_2": _AVX512,
    "AVX512_CORE": frozenset({"avx512_bf16", "amx_bf16", "amx_tile"}),
    "AVX512_CORE_VNNI": frozenset({"avx512_bf16", "amx_bf16", "amx_tile"}),
    "AVX512_CORE_BF16": frozenset({"amx_bf16", "amx_tile"}),
    "AVX512_CORE_FP16": frozenset({"amx_bf16", "amx_tile"}),
}


def machine_flags(
    environ: dict[str, str] | os._Environ = os.environ, cpuinfo: Path = CPUINFO
) -> frozenset[str]:
    """This machine's CPU feature flags as oneDNN sees them (empty without ``/proc/cpuinfo``).

    ``ONEDNN_MAX_CPU_ISA`` (for example ``AVX2``) holds oneDNN's kernels to an older
    instruction set, so the flags above that cap are left out: the choices made from them then
    fit the kernels that will actually run.
    """
    try:
        flags = cpu_flags(cpuinfo.read_text(encoding="utf-8", errors="replace"))
    except OSError:  # no /proc outside Linux
        return frozenset()
    return flags - _ISA_CAPS.get(environ.get("ONEDNN_MAX_CPU_ISA", "").upper(), frozenset())


def bfloat16_blocked(
    environ: dict[str, str] | os._Environ = os.environ, cpuinfo: Path | None = None
) -> str | None:
    """Why bfloat16 products cannot run on this CPU, as one line; None where they can.

    TensorFlow (2.21) hands bfloat16 products to oneDNN on any CPU with AVX-512. Held below
    AVX-512 by ``ONEDNN_MAX_CPU_ISA``, oneDNN has no kernel for them and the process aborts
    without a word, so such a setting is refused before training starts. A CPU without AVX-512
    never reaches oneDNN for them, and with oneDNN off TensorFlow's own kernels run them.
    """
    cap = environ.get("ONEDNN_MAX_CPU_ISA", "").upper()
    if "avx512f" not in _ISA_CAPS.get(cap, frozenset()) or not onednn_enabled(environ):
        return None
    if "avx512f" not in machine_flags({}, cpuinfo or CPUINFO):  # the CPU's own, uncapped
        return None
    return (
        f"bfloat16 products need oneDNN's AVX-512 kernels on this CPU, and "
        f"ONEDNN_MAX_CPU_ISA={cap} holds them back: use --precision float32 or lift the cap"
    )


def cpu_class(flags: Iterable[str]) -> str:
    """The CPU class the speed figures are grouped by: AMX, AVX512-BF16, AVX-512, AVX2 or older."""
    flags = frozenset(flags)
    for name, flag in (("AMX", "amx_bf16"), ("AVX512-BF16", "avx512_bf16")):
        if flag in flags:
            return name
    if "avx512f" in flags:
        return "AVX-512"
    return "AVX2" if "avx2" in flags else "pre-AVX2"


def onednn_enabled(environ: dict[str, str] | os._Environ = os.environ) -> bool:
    """Whether TensorFlow's oneDNN CPU kernels are on (its default; ``TF_ENABLE_ONEDNN_OPTS``)."""
    return environ.get("TF_ENABLE_ONEDNN_OPTS", "1").strip().lower() not in ("0", "false")


def choose_precision(
    setting: str, flags: Iterable[str] = (), *, gpu: bool = False, onednn: bool = True
) -> str:
    """``"float32"`` or ``"bfloat16"`` for a ``--precision`` setting on the described hardware.

    An explicit setting is kept; ``auto`` means bfloat16 on a GPU or on a CPU whose ``flags``
    include AVX512-BF16 or AMX (with ``onednn`` kernels), float32 otherwise.
    """
    if setting not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {setting!r}")
    if setting != "auto":
        return setting
    native = gpu or (onednn and not BF16_CPU_FLAGS.isdisjoint(flags))
    return "bfloat16" if native else "float32"
