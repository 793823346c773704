"""The precision rule: which dtype the frozen backbone gets from trainer.precision and backbone.dtype."""

from __future__ import annotations

import pytest
import torch

from softprompt.config import precision
from softprompt.config.precision import backbone_config_for_precision, check_precision, resolve_auto
from softprompt.errors import ConfigError


def test_the_precision_rule():
    def dtype(precision: str, configured: str = "float32", **trainer) -> str:
        job = {"trainer": {"precision": precision, "accelerator": "gpu", **trainer}, "backbone": {"dtype": configured}}
        check_precision(job["trainer"], job["backbone"])
        return backbone_config_for_precision(job)["dtype"]

    assert [dtype("32-true"), dtype("32-true", "bfloat16"), dtype("32-true", "float16")] == \
        ["float32", "bfloat16", "float16"]
    assert [dtype("bf16-mixed"), dtype("bf16"), dtype("bf16-mixed", "bfloat16")] == ["bfloat16"] * 3
    assert [dtype("16-mixed"), dtype("16"), dtype("16-mixed", "float16")] == ["float16"] * 3  # fine on a GPU
    fsdp = {"_target_": "lightning.pytorch.strategies.FSDPStrategy"}
    assert dtype("bf16-mixed", strategy=fsdp) == "float32"  # FSDP flattens the backbone with the fp32 prompt


@pytest.fixture
def hardware(monkeypatch):
    """`hardware(cpu_flags=..., cuda=None|bf16 bool)`: what `auto` finds on this pretend machine."""

    def set_hardware(cpu_flags: set[str] = frozenset(), cuda: bool | None = None) -> None:
        monkeypatch.delenv(precision.CPU_BF16_ENV, raising=False)  # the suite pins it (conftest)
        monkeypatch.setattr(precision, "cpu_flags", lambda: set(cpu_flags))
        monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda is not None)
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bool(cuda))
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a, **k: "Pretend GPU")

    return set_hardware


def test_auto_puts_the_frozen_backbone_in_bfloat16_only_where_the_hardware_runs_it_natively(hardware):
    def resolve(accelerator: str = "auto", dtype: str = "float32", **trainer) -> tuple[str, str]:
        job = {"trainer": {"precision": "auto", "accelerator": accelerator, **trainer}, "backbone": {"dtype": dtype}}
        check_precision(job["trainer"], job["backbone"])
        resolved = resolve_auto(job["trainer"], job["backbone"])
        return resolved["trainer"], resolved["backbone_dtype"]

    hardware({"avx2", "fma"})  # bfloat16 would be emulated
    assert resolve() == ("32-true", "float32")
    assert resolve(dtype="bfloat16") == ("32-true", "bfloat16")  # an explicit backbone dtype is kept
    for flag in ("avx512_bf16", "amx_bf16"):
        hardware({"avx2", flag})
        assert resolve() == ("32-true", "bfloat16")
        assert resolve(dtype="float16") == ("32-true", "float16")
    hardware(set(), cuda=True)
    assert resolve() == ("32-true", "bfloat16")
    assert resolve(accelerator="cpu") == ("32-true", "float32")  # the CPU is what trains, and it lacks bf16
    assert resolve(strategy="fsdp") == ("bf16-mixed", "float32")  # FSDP: autocast, the backbone stays as loaded
    hardware(set(), cuda=False)  # a CUDA device without bfloat16 (pre-Ampere)
    assert resolve() == ("32-true", "float32")
    hardware({"amx_bf16"})
    assert resolve_auto({"precision": "bf16-mixed"}, {"dtype": "float32"})["trainer"] == "bf16-mixed"  # as set


def test_cpu_flags_come_from_proc_cpuinfo(monkeypatch, tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse avx512_bf16 amx_tile\n")
    real_open = open
    monkeypatch.setattr("builtins.open", lambda path, *a, **k: real_open(cpuinfo if path == "/proc/cpuinfo" else path,
                                                                       *a, **k))
    monkeypatch.delenv(precision.CPU_BF16_ENV, raising=False)
    assert precision.cpu_flags() == {"fpu", "sse", "avx512_bf16", "amx_tile"}
    assert precision.native_bf16(on_cpu=True) == (True, "CPU with avx512_bf16")


def test_the_environment_pins_what_auto_finds_on_a_cpu(monkeypatch):
    monkeypatch.setattr(precision, "cpu_flags", lambda: {"avx512_bf16"})
    monkeypatch.setenv(precision.CPU_BF16_ENV, "0")
    assert precision.native_bf16(on_cpu=True) == (False, "SOFTPROMPT_CPU_BF16=0")
    on_cpu = {"precision": "auto", "accelerator": "cpu"}
    assert resolve_auto(on_cpu, {"dtype": "float32"})["backbone_dtype"] == "float32"
    monkeypatch.setattr(precision, "cpu_flags", lambda: {"avx2"})
    monkeypatch.setenv(precision.CPU_BF16_ENV, "1")
    assert resolve_auto(on_cpu, {"dtype": "float32"})["backbone_dtype"] == "bfloat16"
    monkeypatch.setenv(precision.CPU_BF16_ENV, "yes")
    with pytest.raises(ConfigError, match=r"^SOFTPROMPT_CPU_BF16='yes' is invalid: allowed: 1 "):
        precision.native_bf16(on_cpu=True)
