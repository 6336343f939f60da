"""``--precision``: what ``auto`` picks, how the setting is kept, that bfloat16 resumes exactly."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import TINY

from textgen import CheckpointError, TextgenError
from textgen.checkpoint import load_checkpoint
from textgen.cli.commands import main
from textgen.config import RunConfig, TrainConfig
from textgen.precision import (
    bfloat16_blocked,
    choose_precision,
    cpu_class,
    cpu_flags,
    machine_flags,
    onednn_enabled,
)
from textgen.training.step_plan import StepPlan, choose_plan
from textgen.training.train import Callback, train

SAPPHIRE_RAPIDS = "fpu sse2 avx2 avx512f avx512_bf16 amx_bf16 amx_tile"
ZEN4 = "fpu sse2 avx2 avx512f avx512bw avx512_bf16 avx512_vnni"
SKYLAKE = "fpu sse2 avx2 avx512f avx512bw avx512_vnni"
HASWELL = "fpu sse2 avx avx2 fma"


def _cpuinfo(flags: str, cores: int = 2) -> str:
    block = "processor\t: {n}\nmodel name\t: Some CPU\nflags\t\t: {flags}\nbogomips\t: 4000\n"
    return "\n".join(block.format(n=n, flags=flags) for n in range(cores))


@pytest.mark.parametrize(
    "flags, expected",
    [
        (SAPPHIRE_RAPIDS, "bfloat16"),
        (ZEN4, "bfloat16"),
        ("avx2 amx_bf16", "bfloat16"),
        (SKYLAKE, "float32"),
        (HASWELL, "float32"),
        ("", "float32"),
    ],
)
def test_auto_picks_bfloat16_only_where_the_cpu_multiplies_it(flags: str, expected: str) -> None:
    assert choose_precision("auto", cpu_flags(_cpuinfo(flags))) == expected


def test_auto_needs_onednn_on_the_cpu_but_not_on_a_gpu() -> None:
    flags = cpu_flags(_cpuinfo(SAPPHIRE_RAPIDS))
    assert choose_precision("auto", flags, onednn=False) == "float32"
    assert choose_precision("auto", cpu_flags(_cpuinfo(HASWELL)), gpu=True) == "bfloat16"


def test_an_explicit_precision_is_kept_whatever_the_hardware() -> None:
    assert choose_precision("float32", cpu_flags(_cpuinfo(SAPPHIRE_RAPIDS))) == "float32"
    assert choose_precision("bfloat16", cpu_flags(_cpuinfo(HASWELL))) == "bfloat16"
    with pytest.raises(ValueError, match="precision must be one of"):
        choose_precision("float16")


@pytest.mark.parametrize(
    "flags, setting, cores, expected",
    [
        (HASWELL, "auto", 2, StepPlan("float32", 2, "whole", 1024)),
        (HASWELL, "bfloat16", 2, StepPlan("bfloat16", 2, "blocks")),
        (SKYLAKE, "auto", 2, StepPlan("float32", 2, "blocks")),
        (ZEN4, "auto", 2, StepPlan("bfloat16", 2, "blocks")),
        (ZEN4, "float32", 8, StepPlan("float32", 2, "blocks")),
        (HASWELL, "auto", 1, StepPlan("float32", 1, "whole", 1024)),
    ],
)
def test_the_step_plan_follows_the_cpu(flags, setting, cores, expected) -> None:
    plan = choose_plan(setting, cpu_flags(_cpuinfo(flags)), cores=cores)
    assert plan == expected
    assert str(plan).startswith(expected.precision) and expected.backward in str(plan)


@pytest.mark.parametrize(
    "cap, expected",
    [(None, "AVX512-BF16"), ("avx2", "AVX2"), ("AVX512_CORE", "AVX-512"), ("SSE41", "pre-AVX2")],
)
def test_a_onednn_isa_cap_hides_the_flags_above_it(tmp_path, cap, expected) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(_cpuinfo(ZEN4))
    flags = machine_flags({} if cap is None else {"ONEDNN_MAX_CPU_ISA": cap}, cpuinfo)
    assert cpu_class(flags) == expected
    # Held to AVX2, a bfloat16 CPU gets the AVX2 plan: float32 and the whole backward product.
    if expected == "AVX2":
        assert choose_plan("auto", flags) == StepPlan("float32", 2, "whole", 1024)
    assert machine_flags({}, tmp_path / "missing") == frozenset()


@pytest.mark.parametrize(
    "flags, environ, blocked",
    [
        (ZEN4, {"ONEDNN_MAX_CPU_ISA": "AVX2"}, True),
        (SAPPHIRE_RAPIDS, {"ONEDNN_MAX_CPU_ISA": "sse41"}, True),
        (ZEN4, {}, False),
        (ZEN4, {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE"}, False),
        (HASWELL, {"ONEDNN_MAX_CPU_ISA": "AVX2"}, False),
        (ZEN4, {"ONEDNN_MAX_CPU_ISA": "AVX2", "TF_ENABLE_ONEDNN_OPTS": "0"}, False),
    ],
)
def test_bfloat16_is_refused_where_a_cap_leaves_onednn_without_its_kernels(
    tmp_path, flags, environ, blocked
) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(_cpuinfo(flags))
    reason = bfloat16_blocked(environ, cpuinfo)
    assert (reason is not None) is blocked
    if blocked:
        assert "ONEDNN_MAX_CPU_ISA=" in reason and "--precision float32" in reason


def test_train_refuses_bfloat16_under_such_a_cap_before_writing_anything(tmp_path, corpus) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(_cpuinfo(ZEN4))
    run = tmp_path / "run"
    args = ["train", str(corpus), "--precision", "bfloat16", "--checkpoint-dir", str(run)]
    # A process of its own: oneDNN reads the cap once, and it would hold back this one's kernels.
    code = (
        "import sys, pathlib; from textgen import precision; "
        "precision.CPUINFO = pathlib.Path(sys.argv[1]); "  # an AVX-512 CPU whatever runs this
        "from textgen.cli.commands import main; main(sys.argv[2:])"
    )
    env = {**os.environ, "ONEDNN_MAX_CPU_ISA": "AVX2", "TF_ENABLE_ONEDNN_OPTS": "1"}
    result = subprocess.run(
        [sys.executable, "-c", code, str(cpuinfo), *args, "--units", "16", "--epochs", "1"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert result.returncode == 2, result.stderr
    assert "ONEDNN_MAX_CPU_ISA=AVX2 holds them back" in result.stderr
    assert not (run / "config.json").exists()


def test_cpu_flags_reads_only_the_flags_lines() -> None:
    flags = cpu_flags(_cpuinfo(ZEN4) + "\nbugs\t\t: amx_bf16_is_not_a_flag_here\n")
    assert "avx512_bf16" in flags and "fpu" in flags
    assert "Some" not in flags and "amx_bf16_is_not_a_flag_here" not in flags
    assert cpu_flags("") == frozenset()


@pytest.mark.parametrize(
    "value, enabled", [(None, True), ("1", True), ("0", False), ("false", False), ("TRUE", True)]
)
def test_onednn_follows_tensorflows_variable(value, enabled: bool) -> None:
    environ = {} if value is None else {"TF_ENABLE_ONEDNN_OPTS": value}
    assert onednn_enabled(environ) is enabled


def test_a_bad_precision_is_a_clear_error(tmp_path, corpus) -> None:
    with pytest.raises(TextgenError, match="precision must be one of auto, float32, bfloat16"):
        TrainConfig(precision="half").validate()
    result = CliRunner().invoke(main, ["train", str(corpus), "--precision", "half"])
    assert result.exit_code == 2
    assert "'half' is not one of 'auto', 'float32', 'bfloat16'" in result.output


def test_runs_saved_before_the_setting_resume_in_float32() -> None:
    config = RunConfig(TrainConfig().model(30), TrainConfig(precision="bfloat16")).to_json()
    del config["training"]["precision"]
    assert RunConfig.from_json(config).training.precision == "float32"
    assert TrainConfig().precision == "auto"


def _quiet(**kw):
    return dict(progress=False, echo=lambda _: None, **kw)


class _StopAt(Callback):
    """Stops training after step ``step``, saving a checkpoint as any early stop does."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_batch_end(self, state, loss):
        return "paused" if state.step == self.step else None


def test_bfloat16_run_keeps_its_setting_and_resumes_exactly(tmp_path, corpus) -> None:
    settings = {**TINY, "epochs": 3, "precision": "bfloat16"}
    straight = train(corpus, run_dir=tmp_path / "straight", **_quiet(**settings))
    assert straight.precision == "bfloat16"
    total = load_checkpoint(tmp_path / "straight" / "latest.npz").state.step

    stopped = train(
        corpus, run_dir=tmp_path / "split", callbacks=[_StopAt(total // 2)], **_quiet(**settings)
    )
    assert stopped.stopped == "paused"
    saved = json.loads((tmp_path / "split" / "config.json").read_text())
    assert saved["training"]["precision"] == "bfloat16"
    resumed = train(corpus, run_dir=tmp_path / "split", resume=True, **_quiet())
    assert resumed.precision == "bfloat16"

    a = load_checkpoint(tmp_path / "straight" / "latest.npz")
    b = load_checkpoint(tmp_path / "split" / "latest.npz")
    assert a.state.step == b.state.step == total
    for name, value in a.weights.items():
        np.testing.assert_array_equal(b.weights[name], value, err_msg=name)
    for x, y in zip(a.optimizer, b.optimizer, strict=True):
        np.testing.assert_array_equal(x, y)

    # The setting really changed the arithmetic: float32 trains to other weights.
    train(corpus, run_dir=tmp_path / "f32", **_quiet(**{**settings, "precision": "float32"}))
    other = load_checkpoint(tmp_path / "f32" / "latest.npz")
    assert any(not np.array_equal(other.weights[k], v) for k, v in a.weights.items())


def test_precision_may_change_on_resume(tmp_path, corpus) -> None:
    # It changes rounding, not the network's shape or the data order, like the learning rate.
    train(corpus, run_dir=tmp_path / "run", **_quiet(**{**TINY, "epochs": 1}))
    result = train(
        corpus, run_dir=tmp_path / "run", resume=True, **_quiet(epochs=2, precision="float32")
    )
    assert result.precision == "float32"
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["training"]["precision"] == "float32"
    with pytest.raises(CheckpointError, match="cannot resume"):
        train(corpus, run_dir=tmp_path / "run", resume=True, **_quiet(units=16))
