"""numpy's BLAS kernel as this machine's environment forces it, and the CPU's own.

Some machines force OpenBLAS's kernel with ``OPENBLAS_CORETYPE`` (and its cache size with
``OPENBLAS_L2_SIZE``); a user's machine sets neither. A benchmark whose figures rest on numpy's
products measures with the environment as it is, then again in a child process with both
unset together, so that it reports both kernels.
"""

from __future__ import annotations

import os
import subprocess
import sys

KERNEL_VARIABLES = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")


def kernel_setting(env: dict[str, str] | os._Environ = os.environ) -> str:
    """The kernel variables as ``env`` sets them, for a heading ("unset" when neither is)."""
    return ", ".join(f"{k}={env[k]}" for k in KERNEL_VARIABLES if k in env) or "unset"


def own_kernel_env(env: dict[str, str] | os._Environ = os.environ) -> dict[str, str]:
    """``env`` without the kernel variables, so OpenBLAS picks the CPU's own kernel."""
    return {k: v for k, v in env.items() if k not in KERNEL_VARIABLES}


def forced() -> bool:
    """Whether this process's environment forces numpy's BLAS kernel."""
    return any(k in os.environ for k in KERNEL_VARIABLES)


def rerun_with_own_kernel(extra_args: list[str]) -> None:
    """Run this script again, with ``extra_args`` after its own, in a child whose environment
    lacks the kernel variables; its output goes to this process's."""
    unset = " and ".join(KERNEL_VARIABLES)
    print(f"\nAgain with numpy's BLAS kernel the CPU's own ({unset} unset):")
    sys.stdout.flush()
    command = [sys.executable, sys.argv[0], *sys.argv[1:], *extra_args]
    subprocess.run(command, env=own_kernel_env(), check=True)
