"""Quantised frozen backbones: `backbone.quantization` (none | int8 | nf4 | fp4 | int8_weight_only).

Every quantised backbone loads through transformers' own quantization configs (`from_pretrained(...,
quantization_config=...)`): bitsandbytes' LLM.int8 (`int8`) and 4-bit NF4/FP4 (`nf4`, `fp4`), and torchao's int8
weight-only (`int8_weight_only`). The linear layers are quantised; embeddings and the LM head stay in
`backbone.dtype` (transformers keeps the output embeddings out, so tied embeddings stay tied). The trainable
tensors never see the quantised weights: they stay float32 and enter the backbone as before.

Both libraries are optional (`pip install softprompt[quant]`). A scheme whose library is missing, that the
training device cannot run, or that cannot be sharded (FSDP) is refused in one line before anything loads.

bitsandbytes' 4-bit layers repack their weights for a bfloat16 CPU kernel (`gemv_4bit`) the first time they run
in eval mode on an input that needs no gradient (a validation pass; the first layers under prefix tuning) on a
CPU with avx512_bf16. That kernel has no backward: gradients through the repacked layers are silently dropped
(the residual stream still carries some, so the prompt's gradient is not zero, only wrong). The frozen backbone
is always in eval mode, so the repacking is switched off at load (`keep_differentiable`), and
`undifferentiable_layers` lets training refuse a layer that was repacked anyway.
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch import nn
from torch.utils._python_dispatch import is_traceable_wrapper_subclass

from softprompt.config.precision import runs_on_cpu
from softprompt.config.quantization import KEY, LIBRARIES, SCHEMES, Quantization, parse_quantization
from softprompt.errors import ConfigError

log = logging.getLogger("softprompt")

# torchao's int8 weight-only kernels: CPU and CUDA (bitsandbytes says for itself: `supported_torch_devices`).
TORCHAO_DEVICES = frozenset({"cpu", "cuda"})


def library_installed(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


def library_devices(library: str) -> frozenset[str]:
    """The torch device types `library` runs on, in the installed version."""
    if library == "bitsandbytes":
        import bitsandbytes

        return frozenset(getattr(bitsandbytes, "supported_torch_devices", {"cuda"}))
    return TORCHAO_DEVICES


def check_quantization(backbone: Mapping[str, Any], device: str, fsdp: bool = False) -> Quantization:
    """The backbone's quantisation, refused in one line where it cannot run: its library is not installed, the
    training `device` (cpu, cuda, mps) is not one it runs on, or FSDP would have to shard quantised weights."""
    quantization = parse_quantization(backbone)
    if not quantization.quantized:
        return quantization
    library = str(quantization.library)
    if not library_installed(library):
        raise ConfigError(KEY, quantization.scheme, f"needs {library}, which is not installed (pip install "
                          f"'softprompt[quant]'); allowed without it: "
                          f"{', '.join(s for s in SCHEMES if LIBRARIES.get(s) != library)}")
    devices = library_devices(library)
    if device not in devices:
        raise ConfigError(KEY, quantization.scheme, f"{library} {version(library)} does not run on {device} "
                          f"(it runs on {', '.join(sorted(devices))}); use backbone.quantization=none there")
    if fsdp:
        raise ConfigError(KEY, quantization.scheme, "FSDP cannot shard quantised weights (it flattens each unit into "
                          "one floating tensor); use DDP (trainer=ddp or ddp_cpu), or backbone.quantization=none")
    return quantization


def training_device(trainer: Mapping[str, Any]) -> str:
    """The torch device type Lightning will train on: cpu, cuda or mps."""
    if runs_on_cpu(trainer):
        return "cpu"
    accelerator = str(trainer.get("accelerator") or "auto")
    return "mps" if accelerator == "mps" or (accelerator == "auto" and not torch.cuda.is_available()) else "cuda"


def version(library: str) -> str:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed_version

    try:
        return installed_version(library)
    except PackageNotFoundError:
        return "(not installed)"


def loading_kwargs(quantization: Quantization, dtype: torch.dtype) -> dict[str, Any]:
    """What `from_pretrained` needs to quantise while it loads (nothing for `none`)."""
    if not quantization.quantized:
        return {}
    return {"quantization_config": quantization.transformers_config(dtype)}


def reload_quantized(model: nn.Module, model_class: type, quantization: Quantization, dtype: torch.dtype,
                     folder: str) -> nn.Module:
    """A model built in memory (a random-init backbone), saved to `folder` and loaded back through the one
    quantising path every other backbone takes."""
    model.save_pretrained(folder)
    return model_class.from_pretrained(folder, dtype=dtype, **loading_kwargs(quantization, dtype))


def is_quantized(tensor: torch.Tensor) -> bool:
    """A weight in a quantised format: bitsandbytes' int8/4-bit parameters, or a torchao tensor subclass."""
    return type(tensor).__name__ in ("Int8Params", "Params4bit") or is_traceable_wrapper_subclass(tensor)


def check_quantized(model: nn.Module, quantization: Quantization) -> None:
    """Refuse, in one line, a backbone the library left unquantised: it quantises layers of some types only (torchao
    torch.nn.Linear, so not GPT-2's Conv1D), and would otherwise run the full-precision model unsaid."""
    if not quantization.quantized:
        return
    if any(is_quantized(p) for p in model.parameters()):
        return
    kinds = sorted({type(m).__name__ for m in model.modules() if "weight" in m._parameters} - {"Embedding"})
    raise ConfigError(KEY, quantization.scheme, f"{quantization.library} quantised none of "
                      f"{type(model).__name__}'s layers ({', '.join(kinds)}); on this model use "
                      f"{', '.join(s for s in LIBRARIES if LIBRARIES[s] != quantization.library)} or none")


def four_bit_layers(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """bitsandbytes' 4-bit linear layers of `model`, by name."""
    for name, module in model.named_modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            yield name, module


def keep_differentiable(model: nn.Module) -> None:
    """Switch off bitsandbytes' eval-mode CPU repacking of 4-bit weights (see the module docstring)."""
    for _, layer in four_bit_layers(model):
        layer.support_avx512bf16_for_cpu = False


def undifferentiable_layers(model: nn.Module) -> list[str]:
    """4-bit layers whose weights are in the packed CPU format, which no gradient flows through."""
    return [name for name, layer in four_bit_layers(model)
            if getattr(getattr(layer.weight, "quant_state", None), "packing_format_for_cpu", False)]


def plain_tensors(name: str, tensor: torch.Tensor) -> Iterator[tuple[str, torch.Tensor, str]]:
    """(name, plain tensor, layout) for every tensor a state-dict entry is made of. A plain tensor is itself (layout
    ''); a tensor subclass that wraps others (torchao's quantised weights) is its inner tensors, and its layout (the
    subclass and its metadata: block size, dtype) is hashed with them."""
    if not is_traceable_wrapper_subclass(tensor):
        yield name, tensor, ""
        return
    attributes, context = tensor.__tensor_flatten__()
    layout = f"{type(tensor).__qualname__}{context!r}"
    for attribute in attributes:
        for inner_name, inner, inner_layout in plain_tensors(f"{name}.{attribute}", getattr(tensor, attribute)):
            yield inner_name, inner, layout + inner_layout


def tensor_bytes(tensor: torch.Tensor) -> int:
    """Bytes a (possibly quantised) tensor holds."""
    return sum(t.numel() * t.element_size() for _, t, _ in plain_tensors("", tensor.detach()))


def weight_memory(model: nn.Module) -> dict[str, int]:
    """Resident bytes of the backbone's weights: `linear` (the layers quantisation applies to, with their quant
    state), `embeddings` (input and output embeddings, kept unquantised), `other` (norms, biases, buffers)."""
    embedding_ids = {id(p) for m in (model.get_input_embeddings(), model.get_output_embeddings()) if m is not None
                     for p in m.parameters()}
    seen: set[int] = set()
    memory = {"linear": 0, "embeddings": 0, "other": 0}
    for module in model.modules():
        state = dict(module._parameters) | dict(module._buffers)
        quant_state = getattr(getattr(module, "weight", None), "quant_state", None)
        for tensor in state.values():
            if tensor is None or id(tensor) in seen:
                continue
            seen.add(id(tensor))
            part = ("embeddings" if id(tensor) in embedding_ids else
                    "linear" if isinstance(module, nn.Linear) or quant_state is not None else "other")
            memory[part] += tensor_bytes(tensor)
        if quant_state is not None:  # absmax and the code book of a 4-bit weight
            memory["linear"] += sum(tensor_bytes(t) for t in quant_state.as_dict(packed=True).values())
    return memory
