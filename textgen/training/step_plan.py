"""How the training step runs on this machine: arithmetic, chains, backward and gradient products.

Chosen once per process from what the CPU offers, as ``--precision auto`` chooses the arithmetic
(``textgen.precision``), and said in the last line of ``textgen train``. Each choice follows a
measurement on the hardware it applies to (``docs/speed.md`` has the figures and commands):

- precision: bfloat16 products where the CPU (AVX512-BF16, AMX) or a GPU multiplies them
  natively, else float32.
- chains: the batch splits into two chains whose time loops run concurrently on two or more
  cores; on one core a single chain was faster.
- backward: the backward loop's product ``U dZ`` runs as four gate blocks of one batched product
  with bfloat16 operands or on AVX-512 CPUs, where oneDNN's kernel for the one deep product was
  slow, and as that one product elsewhere: on an AVX2 CPU (AMD Zen 3) the batched form was about
  twice as slow and whole training steps 1.18-1.27x slower with it.
- gradient rows: where the backward product is that one product (AVX2 in float32), the weight
  gradients ``H_prev^T dZ``, products of depth T x B, sum chunks of 1024 rows: TensorFlow's
  kernel ran the whole depth at about 42 GFLOP/s a core on the Zen 3 and chunks at 65-70, and
  whole training steps ran 1.32x faster with chunks of 1024 rows (640: 1.28x; 512: 1.21x and
  1.25x in two runs). AVX-512 CPUs keep one product: on a Zen 5 with AVX512-BF16, steps with
  1024-row chunks ran within the run-to-run spread of one product (0.98x and 1.09x in float32,
  0.93x and 1.04x in bfloat16, in two runs).

The transposed recurrent layout of ``textgen.training.fast_lstm`` and TensorFlow's thread pools
(``textgen.backend``) were measured on AVX2 too and won there as well, so they are not choices.

This module imports neither numpy nor TensorFlow until a GPU question forces it (``auto``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from textgen.errors import OptionsError
from textgen.precision import bfloat16_blocked, choose_precision, machine_flags, onednn_enabled

WIDE_CPU_FLAGS = frozenset({"avx512f"})  # /proc/cpuinfo's name for AVX-512
GRADIENT_ROWS = 1024  # the weight gradients' chunk on AVX2 CPUs (see the module docstring)


@dataclass(frozen=True)
class StepPlan:
    """The training step's choices for one machine; see the module docstring."""

    precision: str = "float32"  # operand type of the LSTM's large products
    chains: int = 2  # batch slices whose time loops run concurrently
    backward: str = "whole"  # the backward loop's product: "whole" or "blocks"
    gradient_rows: int = 0  # chunk of the weight gradients' products; 0: one product

    def matmul_dtype(self):
        """The TensorFlow operand type for ``textgen.training.fast_lstm`` (None: float32, the
        states')."""
        if self.precision == "float32":
            return None
        from textgen.backend import tf

        return tf.as_dtype(self.precision)

    def __str__(self) -> str:
        chains = "1 chain" if self.chains == 1 else f"{self.chains} chains"
        grads = f"{self.gradient_rows}-row" if self.gradient_rows else "one-product"
        return f"{self.precision}, {chains}, {self.backward} backward product, {grads} gradients"


def choose_plan(
    setting: str,
    flags: Iterable[str] = (),
    *,
    cores: int = 2,
    gpu: bool = False,
    onednn: bool = True,
) -> StepPlan:
    """The plan for a ``--precision`` setting on the described hardware."""
    flags = frozenset(flags)
    precision = choose_precision(setting, flags, gpu=gpu, onednn=onednn)
    wide = not WIDE_CPU_FLAGS.isdisjoint(flags)
    chains = 1 if cores == 1 else 2
    if precision == "bfloat16" or wide:
        return StepPlan(precision, chains, "blocks")
    return StepPlan(precision, chains, "whole", GRADIENT_ROWS)


def plan_for_this_machine(setting: str = "float32") -> StepPlan:
    """``choose_plan`` for this process: its CPU flags, usable cores, GPUs and environment.

    Raises OptionsError where bfloat16 is asked for but cannot run (``bfloat16_blocked``).
    """
    from textgen.cores import usable_cores

    gpu = False
    if setting == "auto":  # only auto depends on a GPU, and asking loads TensorFlow
        from textgen.backend import tf

        gpu = bool(tf.config.list_physical_devices("GPU"))
    flags = machine_flags()
    plan = choose_plan(setting, flags, cores=usable_cores(), gpu=gpu, onednn=onednn_enabled())
    blocked = bfloat16_blocked() if plan.precision == "bfloat16" and not gpu else None
    if blocked:
        raise OptionsError(blocked)
    return plan
