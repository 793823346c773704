"""Which dtype the frozen backbone gets for a run's `trainer.precision` and `backbone.dtype`.

The rule, explicit and logged at the start of every run:

    trainer.precision     frozen backbone                                  trainable  compute
    auto (default)        backbone.dtype=float32 becomes bfloat16 where    float32    in the backbone's dtype
                          the hardware runs it natively (a CUDA device
                          with bf16; a CPU with avx512_bf16 or amx_bf16);
                          any other backbone.dtype is kept
    32-true               backbone.dtype as set (float32/bfloat16/float16) float32    in the backbone's dtype
    bf16-mixed            bfloat16 (cast from backbone.dtype=float32)      float32    autocast to bfloat16
    16-mixed (GPU only)   float16 (cast from backbone.dtype=float32)       float32    autocast to float16, loss scaling

`auto` is resolved once per run, before anything loads (`resolve_auto`): to `32-true` with the frozen
backbone in bfloat16 where bf16 is native, and to `32-true` as configured elsewhere. `SOFTPROMPT_CPU_BF16=0`
(or `1`) pins what a CPU is taken to do, whatever its flags say (the test suite pins 0, so its numbers do not
depend on the machine it runs on). Under FSDP (which
does not cast the backbone) it resolves to `bf16-mixed` on a bf16 device. Without native support
bfloat16 is emulated and many times slower than float32, which is why `auto` checks the hardware.

Frozen weights get no optimizer update, so they need no fp32 master copy: under mixed precision they
are loaded in the compute dtype, which halves their memory. The trainable tensors (prompt embeddings,
P-tuning encoder, prefix MLP, encoder-head classifier) keep fp32 master weights and optimizer state;
they are cast to the backbone's dtype where they enter it, so their gradients arrive in fp32.

Lightning's `*-true` half precisions would cast the trainable tensors too, and Lightning 2.6 runs no
fp16 autocast on CPU (it silently switches `16-mixed` to `bf16-mixed`), so those settings are refused
before anything loads. Under FSDP the backbone is not cast: FSDP flattens each unit into one tensor of
one dtype, and the root unit holds the fp32 prompt beside backbone weights.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from softprompt.errors import ConfigError

log = logging.getLogger("softprompt")

AUTO = "auto"
PRECISIONS = (AUTO, "32-true", "bf16-mixed", "16-mixed")
CPU_PRECISIONS = (AUTO, "32-true", "bf16-mixed")
CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")  # /proc/cpuinfo flags of native bfloat16 arithmetic
CPU_BF16_ENV = "SOFTPROMPT_CPU_BF16"  # 0 or 1: overrides what the flags say
ALIASES = {"32": "32-true", "bf16": "bf16-mixed", "16": "16-mixed"}  # Lightning's short spellings
MIXED_BACKBONE_DTYPES = {"bf16-mixed": "bfloat16", "16-mixed": "float16"}


def trainer_precision(trainer: Mapping[str, Any]) -> str:
    """`trainer.precision` spelled in full (`bf16` -> `bf16-mixed`); unset means Lightning's `32-true`."""
    value = trainer.get("precision")
    return "32-true" if value is None else ALIASES.get(str(value), str(value))


def runs_on_cpu(trainer: Mapping[str, Any]) -> bool:
    """Whether Lightning will train on the CPU (`auto` picks CPU when no CUDA or MPS device is there)."""
    accelerator = str(trainer.get("accelerator") or "auto")
    if accelerator == "auto":
        return not (torch.cuda.is_available() or torch.backends.mps.is_available())
    return accelerator == "cpu"


def strategy_name(trainer: Mapping[str, Any]) -> str:
    """`trainer.strategy`'s class path (`_target_`) or Lightning alias (`ddp`, `fsdp`); '' when unset."""
    strategy = trainer.get("strategy")
    name = strategy.get("_target_", "") if isinstance(strategy, Mapping) else strategy
    return str(name or "")


def uses_fsdp(trainer: Mapping[str, Any]) -> bool:
    return "fsdp" in strategy_name(trainer).lower()


def backbone_dtype(precision: str, dtype: str, fsdp: bool = False) -> str:
    """The frozen backbone's dtype name under `precision` (see the module docstring)."""
    if fsdp:
        return dtype
    return MIXED_BACKBONE_DTYPES.get(precision, dtype)


def check_precision(trainer: Mapping[str, Any], backbone: Mapping[str, Any]) -> None:
    """One-line ConfigErrors for precision settings this project cannot honour; nothing is loaded yet."""
    value = trainer.get("precision")
    precision = trainer_precision(trainer)
    if precision not in PRECISIONS:
        raise ConfigError("trainer.precision", value, f"allowed: {', '.join(PRECISIONS)} (the trainable tensors "
                          "stay float32; for a bfloat16 backbone without autocast set backbone.dtype=bfloat16)")
    if precision == "16-mixed" and runs_on_cpu(trainer):
        raise ConfigError("trainer.precision", value, "Lightning has no float16 autocast on CPU (it would silently "
                          f"run bf16-mixed); allowed on CPU: {', '.join(CPU_PRECISIONS)}")
    compute = MIXED_BACKBONE_DTYPES.get(precision)
    dtype = backbone.get("dtype")
    if compute is not None and dtype not in ("float32", compute):
        raise ConfigError("backbone.dtype", dtype, f"trainer.precision={precision} computes in {compute}; "
                          f"allowed: float32 (cast to {compute}) or {compute}")


def cpu_flags() -> set[str]:
    """The CPU's feature flags (Linux /proc/cpuinfo); empty where they cannot be read."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def native_bf16(on_cpu: bool) -> tuple[bool, str]:
    """(whether the training device runs bfloat16 natively, what was found): a CUDA device with bf16, or a CPU
    with avx512_bf16 / amx_bf16."""
    if not on_cpu:
        if torch.cuda.is_available():
            name = torch.cuda.get_device_name()
            native = torch.cuda.is_bf16_supported()
            return native, f"CUDA device {name} {'supports' if native else 'lacks'} bfloat16"
        return False, "no CUDA device"
    pinned = os.environ.get(CPU_BF16_ENV)
    if pinned is not None:  # what `auto` finds, pinned: to reproduce numbers from a machine of the other kind
        if pinned not in ("0", "1"):
            raise ConfigError(CPU_BF16_ENV, pinned, "allowed: 1 (treat the CPU as running bfloat16 natively), 0 "
                                                    "(as emulating it), or unset (read /proc/cpuinfo)")
        return pinned == "1", f"{CPU_BF16_ENV}={pinned}"
    found = sorted(set(CPU_BF16_FLAGS) & cpu_flags())
    return bool(found), (f"CPU with {', '.join(found)}" if found else
                         f"CPU without {' or '.join(CPU_BF16_FLAGS)} (bfloat16 would be emulated)")


def resolve_auto(trainer: Mapping[str, Any], backbone: Mapping[str, Any]) -> dict[str, str]:
    """What `trainer.precision=auto` means on this machine: {"trainer": the Lightning precision, "backbone_dtype":
    the frozen backbone's dtype, "why": what was found}. Any other precision is returned as configured."""
    precision, dtype = trainer_precision(trainer), str(backbone.get("dtype"))
    if precision != AUTO:
        return {"trainer": precision, "backbone_dtype": dtype, "why": "as configured"}
    native, why = native_bf16(runs_on_cpu(trainer))
    if not native:
        return {"trainer": "32-true", "backbone_dtype": dtype, "why": why}
    if uses_fsdp(trainer):  # FSDP keeps one dtype per unit: autocast instead of casting the backbone
        return {"trainer": "bf16-mixed", "backbone_dtype": dtype, "why": why}
    return {"trainer": "32-true", "backbone_dtype": "bfloat16" if dtype == "float32" else dtype, "why": why}


@dataclass(frozen=True)
class Precision:
    """What a run's precision resolved to: as asked (`requested`), what Lightning runs (`trainer`), the frozen
    backbone's dtype, and why (what `auto` found on this machine, or `as configured`)."""

    requested: str
    trainer: str
    backbone_dtype: str
    why: str

    def record(self) -> dict[str, str]:
        """As metrics.json's `precision` holds it."""
        return {"requested": self.requested, "trainer": self.trainer, "backbone_dtype": self.backbone_dtype,
                "why": self.why}


def settle_precision(trainer: Mapping[str, Any], backbone: Mapping[str, Any]) -> Precision:
    """Resolve `trainer.precision` (`auto` for this machine) and log it; the configs are only read."""
    requested = trainer_precision(trainer)
    resolution = resolve_auto(trainer, backbone)
    if requested == AUTO:
        log.info("trainer.precision=auto: %s, frozen backbone in %s (%s); trainable tensors stay float32",
                 resolution["trainer"], resolution["backbone_dtype"], resolution["why"])
    return Precision(requested, resolution["trainer"], resolution["backbone_dtype"], resolution["why"])


def backbone_config_for_precision(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The run's backbone config with the dtype the frozen backbone gets under `trainer.precision`.

    Loading (and the in-process backbone cache, keyed by this whole config) then sees the real dtype.
    """
    backbone = dict(cfg["backbone"])
    precision = trainer_precision(cfg["trainer"])
    configured = str(backbone["dtype"])
    fsdp = uses_fsdp(cfg["trainer"])
    dtype = backbone_dtype(precision, configured, fsdp)
    if dtype != configured:
        log.info("trainer.precision=%s: frozen backbone cast to %s (backbone.dtype=%s); trainable tensors stay "
                 "float32", precision, dtype, configured)
    elif fsdp and precision in MIXED_BACKBONE_DTYPES:
        log.info("trainer.precision=%s under FSDP: frozen backbone kept in %s (FSDP flattens it with the float32 "
                 "prompt); trainable tensors stay float32", precision, dtype)
    else:
        log.info("trainer.precision=%s: frozen backbone in %s; trainable tensors stay float32", precision, dtype)
    backbone["dtype"] = dtype
    return backbone


def full_precision(tensor: torch.Tensor) -> torch.autocast:
    """Autocast off on `tensor`'s device: the trainable reparameterisations (P-tuning's encoder, the prefix
    MLP, the encoder-head classifier) compute in fp32 under mixed precision. They run once per forward
    on a few vectors, so this costs nothing, and their output is cast to the backbone's dtype where it
    enters the backbone."""
    return torch.autocast(tensor.device.type, enabled=False)


def check_hardware(trainer: Mapping) -> None:
    """GPU presets on a machine without CUDA fail here in one line, not inside Lightning."""
    accelerator = str(trainer.get("accelerator") or "auto")
    if uses_fsdp(trainer):
        on_cpu = runs_on_cpu(trainer)
        if on_cpu != strategy_name(trainer).endswith(".CPUFSDPStrategy"):
            allowed = ("trainer=fsdp runs on CUDA GPUs; on CPU use trainer=fsdp_cpu (gloo processes)" if on_cpu else
                       "trainer=fsdp_cpu runs on CPU processes only; on GPUs use trainer=fsdp")
            raise ConfigError("trainer.accelerator", accelerator, allowed)
    if accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        raise ConfigError("trainer.accelerator", accelerator, "no CUDA device is visible on this machine; use "
                          "trainer=cpu, or trainer=ddp_cpu for several processes")
