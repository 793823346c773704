"""Attention-level injection without `past_key_values`.

Key/value prefixes are prepended inside attention through transformers' attention-function interface:
we register a wrapper of the stock SDPA function (and its mask builder) under our own name. The
prefix travels as a forward keyword argument, which transformers passes down to every attention
call, so it works under gradient checkpointing (the kwarg is part of the recomputed call), for
encoder, decoder and cross-attention modules (each tagged with its role), and with grouped-query
attention (prefixes have the key/value head count; SDPA repeats them with the real keys).

The same wrapper adds an optional gated attention term over extra positions (`AttentionAddend`, its own
kwarg): a separately normalised softmax whose output joins the attention output before the output projection.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from transformers import AttentionInterface, PreTrainedModel
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.utils import logging as transformers_logging

from softprompt.errors import SoftPromptError

PREFIX_KWARG = "softprompt_prefix"
CAPTURE_KWARG = "softprompt_capture"
ADDEND_KWARG = "softprompt_addend"
# backbone.attention: which SDPA kernels our registered wrapper lets PyTorch use.
#   auto: PyTorch's choice, except the math kernel where it is faster (CPU bfloat16 with gradients: the flash
#         kernel's CPU backward is several times slower than its forward; docs/results/ has the measurement);
#   sdpa: PyTorch's choice (flash, memory-efficient or math); math: always the math kernel.
ATTENTION_BACKENDS = ("auto", "sdpa", "math")
IMPLEMENTATION_PREFIX = "softprompt_"
ROLE_ATTRIBUTE = "softprompt_role"
VERIFIED_ATTRIBUTE = "softprompt_prefix_reaches_every_layer"
BACKEND_ATTRIBUTE = "softprompt_attention_backend"  # backbone.attention, as loading set it


@dataclass
class PrefixKV:
    """Key/value prefixes per attention role and layer, each (batch or 1, kv_heads, prefix_len, head_dim).

    Roles: "self" for single-stack models; "encoder", "decoder" and "cross" for encoder-decoders
    (Li & Liang prefix all three; PEFT only the decoder).
    """

    keys: dict[str, list[torch.Tensor]]
    values: dict[str, list[torch.Tensor]]
    # (batch, prefix_len) bool: which prefix columns each row sees. Mixed-prompt batches pad prefixes of
    # different lengths (or none) to one width and hide the padding; None = every row sees all of them.
    visible: torch.Tensor | None = None

    def for_module(self, module: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor] | None:
        role = getattr(module, ROLE_ATTRIBUTE, None)
        if role not in self.keys:
            return None  # e.g. GPT-2's optional cross-attention
        return self.keys[role][module.layer_idx], self.values[role][module.layer_idx]


def attention_role(name: str, encoder_decoder: bool) -> str:
    """The role of an attention module, from its qualified name."""
    if any(tag in name for tag in ("encoder_attn", "EncDecAttention", "crossattention", "cross_attn")):
        return "cross"
    if not encoder_decoder:
        return "self"
    return "decoder" if "decoder" in name else "encoder"


def attention_modules(model: PreTrainedModel) -> dict[tuple[str, int], torch.nn.Module]:
    """Every attention module by (role, layer index), tagged with its role."""
    encoder_decoder = bool(model.config.is_encoder_decoder)
    found = {}
    for name, module in model.named_modules():
        if isinstance(getattr(module, "layer_idx", None), int) and hasattr(module, "is_causal"):
            role = attention_role(name, encoder_decoder)
            setattr(module, ROLE_ATTRIBUTE, role)
            found[role, module.layer_idx] = module
    return found


def attention_layers(model: PreTrainedModel) -> dict[str, int]:
    """How many attention layers each role has (tagging the modules with their role on the way)."""
    counts: dict[str, int] = {}
    for role, layer in attention_modules(model):
        counts[role] = max(counts.get(role, 0), layer + 1)
    if not model.config.is_encoder_decoder:
        counts.pop("cross", None)  # decoder-only cross-attention is unused here
    return counts


@dataclass
class KVCapture:
    """Collects each attention layer's key/value states (after position encoding) during one forward,
    keyed by (role, layer index)."""

    keys: dict[tuple[str, int], torch.Tensor] = field(default_factory=dict)
    values: dict[tuple[str, int], torch.Tensor] = field(default_factory=dict)


@dataclass
class AttentionAddend:
    """A gated attention term over extra positions, added to chosen layers' attention output (before the output
    projection): gate * softmax(q K^T * scaling) V, normalised on its own, so the real positions' attention is
    untouched. K and V are `states` (P, hidden) through the layer's own key and value projections, with no position
    encoding; every query sees all P positions (no mask, so padding cannot matter). Keyed by (role, layer index);
    a gate is (1,) for every head, or (heads,)."""

    states: dict[tuple[str, int], torch.Tensor]
    gates: dict[tuple[str, int], torch.Tensor]

    def for_module(self, module: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor] | None:
        where = (getattr(module, ROLE_ATTRIBUTE, None), module.layer_idx)
        return (self.states[where], self.gates[where]) if where in self.states else None


def projects_keys_values(module: torch.nn.Module) -> bool:
    """Whether `key_value_states` can use the module's own projections: separate k_proj / v_proj (Llama, Mistral,
    Qwen2, ...) or GPT-2's fused c_attn self-attention."""
    separate = all(isinstance(getattr(module, name, None), torch.nn.Module) for name in ("k_proj", "v_proj"))
    fused = isinstance(getattr(module, "c_attn", None), torch.nn.Module) and hasattr(module, "split_size") \
        and not getattr(module, "is_cross_attention", False)
    return separate or fused


def key_value_states(module: torch.nn.Module, states: torch.Tensor, head_dim: int, dtype: torch.dtype
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """`states` (P, hidden) as keys and values (1, kv_heads, P, head_dim) through the module's own projections."""
    x = states.to(dtype)
    if hasattr(module, "k_proj"):
        key, value = module.k_proj(x), module.v_proj(x)
    else:
        _, key, value = module.c_attn(x).split(module.split_size, dim=-1)
    return tuple(t.view(1, len(x), -1, head_dim).transpose(1, 2) for t in (key, value))


def _gated_term(module: torch.nn.Module, query: torch.Tensor, states: torch.Tensor, gate: torch.Tensor,
                scaling: float | None) -> torch.Tensor:
    """(batch, q_len, heads, head_dim), as SDPA returns its output."""
    heads, head_dim, dtype = query.shape[1], query.shape[-1], query.dtype
    key, value = key_value_states(module, states, head_dim, dtype)
    key, value = (t.repeat_interleave(heads // t.shape[1], dim=1) for t in (key, value))  # grouped-query heads
    scores = torch.matmul(query, key.transpose(2, 3)) * (head_dim ** -0.5 if scaling is None else scaling)
    weights = torch.softmax(scores, dim=-1, dtype=torch.float32).to(dtype) * gate.to(dtype).view(1, -1, 1, 1)
    return torch.matmul(weights, value).transpose(1, 2)


def _extend_mask(mask: torch.Tensor | None, module: torch.nn.Module, query: torch.Tensor, key_len: int,
                 prefix_len: int, visible: torch.Tensor | None = None) -> torch.Tensor | None:
    """Add prefix columns in front of the key axis: always visible, or per row as `visible` (batch, prefix_len)
    says."""
    causal = getattr(module, "is_causal", True)
    if mask is None:
        if not causal and visible is None:
            return None  # bidirectional and unpadded: everything is visible already
        q_len = query.shape[2]
        mask = torch.ones(q_len, key_len, dtype=torch.bool, device=query.device)
        mask = (mask.tril(key_len - q_len) if causal else mask)[None, None]
    if visible is None:
        fill = True if mask.dtype == torch.bool else 0.0
        prefix = torch.full((*mask.shape[:-1], prefix_len), fill, dtype=mask.dtype, device=mask.device)
    else:
        prefix = visible[:, None, None, :].to(mask.device)
        if mask.dtype != torch.bool:  # an additive mask: 0 where visible, the dtype's minimum where hidden
            prefix = torch.zeros((), dtype=mask.dtype, device=mask.device).masked_fill(
                ~prefix, torch.finfo(mask.dtype).min)
        shape = (len(visible), *mask.shape[1:-1])
        mask, prefix = mask.expand(*shape, -1), prefix.expand(*shape, -1)
    return torch.cat([prefix, mask], dim=-1)


def uses_math_kernel(backend: str, device_type: str, dtype: torch.dtype, grad: bool) -> bool:
    """Whether `backend` restricts an attention call to the math kernel (see ATTENTION_BACKENDS)."""
    return backend == "math" or (backend == "auto" and device_type == "cpu" and dtype == torch.bfloat16 and grad)


def _kernels(backend: str, query: torch.Tensor) -> contextlib.AbstractContextManager:
    """The SDPA kernels this call may use under `backend`."""
    math = uses_math_kernel(backend, query.device.type, query.dtype, torch.is_grad_enabled())
    return sdpa_kernel(SDPBackend.MATH) if math else contextlib.nullcontext()


def _wrap(base: Callable, backend: str) -> Callable:
    def attention(module, query, key, value, attention_mask, **kwargs):
        prefix: PrefixKV | None = kwargs.pop(PREFIX_KWARG, None)
        capture: KVCapture | None = kwargs.pop(CAPTURE_KWARG, None)
        addend: AttentionAddend | None = kwargs.pop(ADDEND_KWARG, None)
        term = addend.for_module(module) if addend is not None else None
        # From the query before the prefix and the kernel see it (SDPA may pack grouped heads while decoding).
        extra = _gated_term(module, query, *term, kwargs.get("scaling")) if term is not None else None
        if capture is not None:
            where = (getattr(module, ROLE_ATTRIBUTE, "self"), module.layer_idx)
            capture.keys[where], capture.values[where] = key, value
        pair = prefix.for_module(module) if prefix is not None else None
        if pair is not None:
            prefix_keys, prefix_values = pair
            batch, length = key.shape[0], prefix_keys.shape[2]
            attention_mask = _extend_mask(attention_mask, module, query, key.shape[2], length, prefix.visible)
            if kwargs.get("position_bias") is not None:  # T5: relative bias; the prefix has no position
                kwargs["position_bias"] = torch.nn.functional.pad(kwargs["position_bias"], (length, 0))
            key = torch.cat([prefix_keys.to(key.dtype).expand(batch, -1, -1, -1), key], dim=2)
            value = torch.cat([prefix_values.to(value.dtype).expand(batch, -1, -1, -1), value], dim=2)
        with _kernels(backend, query):
            output, weights = base(module, query, key, value, attention_mask, **kwargs)
        return (output, weights) if extra is None else (output + extra.to(output.dtype), weights)

    return attention


def _register(backend: str) -> str:
    """The name of our wrapper of SDPA for `backend`, registered with transformers' attention interface."""
    name = IMPLEMENTATION_PREFIX + backend
    if name not in ALL_ATTENTION_FUNCTIONS.valid_keys():
        AttentionInterface.register(name, _wrap(ALL_ATTENTION_FUNCTIONS["sdpa"], backend))
        AttentionMaskInterface.register(name, ALL_MASK_ATTENTION_FUNCTIONS["sdpa"])
    return name


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """transformers' warnings off meanwhile: what it says while we probe an architecture (unused masks, slow
    kernels, attention it cannot switch) must not bury a one-line refusal."""
    level = transformers_logging.get_verbosity()
    transformers_logging.set_verbosity_error()
    try:
        yield
    finally:
        transformers_logging.set_verbosity(level)


def attention_backend(model: PreTrainedModel) -> str | None:
    """The backend of our wrapper the model runs on, or None when it runs its own attention."""
    name = str(model.config._attn_implementation)
    return name.removeprefix(IMPLEMENTATION_PREFIX) if name.startswith(IMPLEMENTATION_PREFIX) else None


def configure_attention(model: PreTrainedModel, backend: str) -> None:
    """Loading: remember `backend` for the prefix methods, and switch to our wrapper now only where it changes the
    kernels (math; auto on a bfloat16 CPU model). Elsewhere the model keeps transformers' own SDPA path, whose
    causal-mask shortcuts give bit-for-bit the numbers of a plain transformers run."""
    if backend not in ATTENTION_BACKENDS:
        raise ValueError(f"unknown attention backend {backend!r}")  # before it is recorded on the model
    setattr(model, BACKEND_ATTRIBUTE, backend)
    if uses_math_kernel(backend, model.device.type, model.dtype, grad=True):  # training is where it changes
        use_attention(model, backend)


def use_attention(model: PreTrainedModel, backend: str) -> None:
    """Run the model's attention through our wrapper of SDPA with `backend`'s kernels (idempotent); raises
    UnreachableAttentionError when the architecture does not take transformers' attention interface."""
    if backend not in ATTENTION_BACKENDS:
        raise ValueError(f"unknown attention backend {backend!r}")
    attention_layers(model)  # tag every attention module with its role
    if attention_backend(model) != backend:
        try:
            with quiet_transformers():
                model.set_attn_implementation(_register(backend))
        except (ValueError, ImportError) as error:
            raise UnreachableAttentionError(f"{type(model).__name__} does not take transformers' attention "
                                            f"interface ({error})") from None


class UnreachableAttentionError(SoftPromptError):
    """A prefix method cannot reach every attention layer of this architecture."""


# Config keys holding the layer count of each attention role, in the spellings transformers uses.
LAYER_COUNT_KEYS = {"self": ("num_hidden_layers",), "encoder": ("encoder_layers", "num_layers"),
                    "decoder": ("decoder_layers", "num_decoder_layers"),
                    "cross": ("decoder_layers", "num_decoder_layers")}


def configured_layers(model: PreTrainedModel) -> dict[str, int]:
    """How many attention layers of each role the model's config declares (roles it names a count for)."""
    config = model.config if model.config.is_encoder_decoder else model.config.get_text_config()
    roles = ("encoder", "decoder", "cross") if model.config.is_encoder_decoder else ("self",)
    counts = {}
    for role in roles:
        value = next((getattr(config, key) for key in LAYER_COUNT_KEYS[role]
                      if isinstance(getattr(config, key, None), int)), None)
        if value is not None:
            counts[role] = value
    return counts


def reached_layers(model: PreTrainedModel) -> dict[str, set[int]]:
    """The (role -> layer indices) whose attention call our wrapper sees, from one two-token forward."""
    capture = KVCapture()
    ids = torch.zeros((1, 2), dtype=torch.long, device=next(model.parameters()).device)
    inputs = {"decoder_input_ids": ids} if model.config.is_encoder_decoder else {}
    with torch.no_grad(), quiet_transformers():
        model.base_model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False, **inputs,
                         **{CAPTURE_KWARG: capture})
    reached: dict[str, set[int]] = {}
    for role, layer in capture.keys:
        reached.setdefault(role, set()).add(layer)
    return reached


def check_every_layer_reached(model: PreTrainedModel) -> None:
    """Refuse an architecture whose attention layers a prefix cannot all reach: a partial (or empty) prefix
    would train silently. Every layer the config declares must call our wrapper, under its role."""
    architecture = type(model).__name__
    expected = configured_layers(model)
    for role, count in attention_layers(model).items():
        expected[role] = max(expected.get(role, 0), count)
    reached = reached_layers(model)
    missing = {role: sorted(set(range(count)) - reached.get(role, set())) for role, count in expected.items()}
    missing = {role: layers for role, layers in missing.items() if layers}
    if not expected or missing:
        found = ", ".join(f"{len(reached.get(role, ()))} of {count} {role}-attention layers"
                          for role, count in expected.items()) or "no attention layers"
        raise UnreachableAttentionError(
            f"prefix methods cannot serve {architecture}: a key/value prefix must enter every attention layer, and "
            f"it reaches {found} (missing: {missing or 'all'}); only layers that call transformers' attention "
            "interface (attn_implementation sdpa/eager) can take a prefix. Use an input-level method (prompt_tuning, "
            "p_tuning) with this backbone")


def enable_prefix_injection(model: PreTrainedModel) -> None:
    """Make sure the model runs on our wrapper of PyTorch SDPA (with the backend loading recorded; `auto` for a
    model built elsewhere), and check once that a prefix reaches every attention layer.

    Without a prefix kwarg the wrapper calls the stock SDPA function unchanged. Eager attention is
    model-specific in transformers, so SDPA is the one wrapped for every model.
    """
    try:
        use_attention(model, attention_backend(model) or getattr(model, BACKEND_ATTRIBUTE, "auto"))
    except UnreachableAttentionError as error:
        raise UnreachableAttentionError(f"prefix methods cannot serve it: {error}") from None
    if not getattr(model, VERIFIED_ATTRIBUTE, False):
        check_every_layer_reached(model)
        setattr(model, VERIFIED_ATTRIBUTE, True)


def prefix_kv(grid: torch.Tensor, roles: Mapping[str, int], visible: torch.Tensor | None = None) -> PrefixKV:
    """PrefixKV from a (layers, 2, batch or 1, kv_heads, P, head_dim) grid, whose layers are laid out role after
    role; `visible` (batch, P) marks each row's real prefix columns (mixed-prompt batches), None = all."""
    keys, values, start = {}, {}, 0
    for role, count in roles.items():
        keys[role], values[role] = list(grid[start:start + count, 0]), list(grid[start:start + count, 1])
        start += count
    return PrefixKV(keys=keys, values=values, visible=visible)
