"""Attention-level soft prompts: key/value prefixes in every attention layer.

Prefix tuning (Li & Liang 2021) computes the prefix through an MLP (`reparam=mlp`); deep prompts /
P-tuning v2 (Liu et al. 2022) train it directly (`reparam=none`). The flat layout of the prefix,
(num_virtual_tokens, layers x 2 x kv_heads x head_dim), is PEFT's, so tensors move across unchanged.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any, ClassVar

import torch
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from softprompt.backbones.attention_prefix import (
    CAPTURE_KWARG,
    PREFIX_KWARG,
    KVCapture,
    PrefixKV,
    attention_layers,
    enable_prefix_injection,
    prefix_kv,
)
from softprompt.backbones.families import Family
from softprompt.config.precision import full_precision
from softprompt.methods.base import NotRepresentable, PeftForm, SoftPromptModule
from softprompt.methods.config import PrefixConfig
from softprompt.methods.init import (
    RANDOM_INITS,
    InitContext,
    initial_token_ids,
    random_values,
)
from softprompt.methods.inspection import prefix_norms_report
from softprompt.methods.prompt_encoders import zero_last_linear


def prefix_geometry(model: PreTrainedModel) -> tuple[dict[str, int], int, int]:
    """(layers per attention role, key/value heads, head dim)."""
    config = model.config.get_text_config()
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or getattr(config, "d_kv", None) or config.hidden_size // heads
    return attention_layers(model), kv_heads, head_dim


class AttentionLevelPrefix(SoftPromptModule):
    """Prefix tuning (reparam=mlp) and P-tuning v2 / deep prompts (reparam=none): a key/value prefix per layer."""

    Config = PrefixConfig
    injection = "attention"
    # Folded, the prefix is the MLP's output: a plain per-layer tensor that trains directly.
    folded_config = MappingProxyType({"reparam": "none", "zero_init": False})
    folded_away = ("reparam",)

    def __init__(self, *, num_virtual_tokens: int, init: str, init_context: InitContext, reparam: str,
                 reparam_hidden: int, zero_init: bool, initial_state: Mapping[str, torch.Tensor] | None = None,
                 **base) -> None:
        super().__init__(**base)
        enable_prefix_injection(self.backbone)
        self.num_virtual_tokens = self.position_offset = num_virtual_tokens
        self.init = init
        self.geometry = prefix_geometry(self.backbone)
        roles, kv_heads, head_dim = self.geometry
        layers = sum(roles.values())
        flat = layers * 2 * kv_heads * head_dim
        if initial_state is not None:  # init=from_artifact (reparam=none): a trained prompt's folded prefix
            self.prefix = self._folded_parameter(initial_state, "prefix", (num_virtual_tokens, flat))
            self.reparam = None
        elif reparam == "mlp":
            # PEFT's layout: the MLP input is kv_dim wide (the hidden size unless attention is grouped).
            kv_dim = kv_heads * head_dim
            random_init = init if init in RANDOM_INITS else "random_normal"
            self.prefix_embedding = nn.Parameter(random_values(random_init, (num_virtual_tokens, kv_dim), init_context))
            self.reparam = nn.Sequential(nn.Linear(kv_dim, reparam_hidden), nn.Tanh(),
                                         nn.Linear(reparam_hidden, flat))
            if init not in RANDOM_INITS:
                self._fit_mlp_output(self._initial_prefix(init, num_virtual_tokens, init_context))
            elif zero_init:
                zero_last_linear(self.reparam)
        else:
            self.prefix = nn.Parameter(self._initial_prefix(init, num_virtual_tokens, init_context))
            self.reparam = None

    @classmethod
    def from_config(cls, config: PrefixConfig, init_context: Callable[[], InitContext],
                    initial_state: Mapping[str, torch.Tensor] | None = None, **common) -> AttentionLevelPrefix:
        return cls(num_virtual_tokens=config.num_virtual_tokens, init=config.init, init_context=init_context(),
                   reparam=config.reparam, reparam_hidden=config.reparam_hidden, zero_init=config.zero_init,
                   initial_state=initial_state, **common)

    @classmethod
    def peft_form(cls, config: PrefixConfig, family: Family) -> PeftForm:
        """PREFIX_TUNING holding the prefix itself (the MLP's output), in PEFT's flat layout; the benchmark's
        baseline trains PEFT's own projection when ours has an MLP."""
        if family == Family.SEQ2SEQ:
            raise NotRepresentable(f"{config.name} on a seq2seq backbone also prefixes the encoder's self-attention; "
                                   "PEFT's PREFIX_TUNING prefixes only the decoder's self- and cross-attention")
        projection = config.reparam == "mlp"
        training = {"prefix_projection": projection, **({"encoder_hidden_size": config.reparam_hidden}
                                                         if projection else {})}
        return PeftForm("PREFIX_TUNING", "prefix", {"prefix_projection": False}, training)

    # A foreign prefix (PREFIX_TUNING without projection, or saved from training mode) is P-tuning v2.
    peft_imports: ClassVar[Mapping[str, list[str]]] = {"PREFIX_TUNING": ["method=p_tuning_v2"]}

    @classmethod
    def check_peft_import(cls, adapter_config: Mapping[str, Any], width: int) -> None:
        if adapter_config.get("task_type") == "SEQ_2_SEQ_LM":
            raise NotRepresentable("a SEQ_2_SEQ_LM PREFIX_TUNING adapter prefixes only the decoder's self- and "
                                   "cross-attention; our prefixes also go into the encoder's self-attention")
        if adapter_config.get("prefix_projection") and width == adapter_config.get("token_dim"):
            raise NotRepresentable("it holds the prefix MLP's input (PREFIX_TUNING with prefix_projection=true saved "
                                   "in inference mode), not the prefix; re-save it from a training-mode PeftModel, "
                                   "which stores the MLP's output")

    def inspect(self, tokenizer: PreTrainedTokenizerBase, top_k: int) -> list[str]:
        """Per-layer key and value norms: the prefix lives in each layer's key/value space."""
        roles, kv_heads, head_dim = self.geometry
        return [f"as key/value prefixes in {sum(roles.values())} attention layers",
                *prefix_norms_report(self.folded_state()["prefix"], roles, kv_heads, head_dim)]

    def _fit_mlp_output(self, target: torch.Tensor) -> None:
        """Set the MLP's last layer so its first output is exactly `target` (real words' activations).

        With n <= reparam_hidden the hidden activations H (n x hidden) have full row rank, so the
        minimum-norm W = (pinv(H) @ target)^T, bias 0, solves H @ W^T = target.
        """
        last = self.reparam[-1]
        with torch.no_grad():
            hidden = self.reparam[:-1](self.prefix_embedding)
            last.weight.copy_((torch.linalg.pinv(hidden.double()) @ target.double()).T.float())
            last.bias.zero_()

    def _initial_prefix(self, init: str, n: int, ctx: InitContext) -> torch.Tensor:
        """Random values, or the key/value activations of real words (Li & Liang 2021, section 7.2)."""
        roles, kv_heads, head_dim = self.geometry
        layers = sum(roles.values())
        if init in RANDOM_INITS:
            return random_values(init, (n, layers * 2 * kv_heads * head_dim), ctx)
        ids = initial_token_ids(init, n, ctx)[None]
        capture = KVCapture()
        # Encoder-decoders read the words on both sides, so every role (encoder, decoder, cross) gets them.
        inputs = {"decoder_input_ids": ids} if self.backbone.config.is_encoder_decoder else {}
        with torch.no_grad():
            self.backbone.base_model(input_ids=ids, use_cache=False, **inputs, **{CAPTURE_KWARG: capture})
        per_layer = [torch.stack([capture.keys[role, i][0], capture.values[role, i][0]])
                     for role, count in roles.items() for i in range(count)]
        return torch.stack(per_layer).permute(3, 0, 1, 2, 4).reshape(n, -1).float()  # (n, L*2*H*hd)

    def flat_prefix(self) -> torch.Tensor:
        """(num_virtual_tokens, layers x 2 x kv_heads x head_dim), PEFT's layout, fp32."""
        if self.reparam is None:
            return self.prefix
        with full_precision(self.prefix_embedding):
            return self.reparam(self.prefix_embedding)

    def prefix_grid(self) -> torch.Tensor:
        """(layers, 2, kv_heads, num_virtual_tokens, head_dim): each layer's key (0) and value (1) prefix."""
        roles, kv_heads, head_dim = self.geometry
        grid = self.flat_prefix().view(self.num_virtual_tokens, sum(roles.values()), 2, kv_heads, head_dim)
        return grid.permute(1, 2, 3, 0, 4)

    def attention_kwargs(self) -> dict[str, PrefixKV]:
        # Computed once per forward; a batch axis of 1 broadcasts over the batch.
        return {PREFIX_KWARG: prefix_kv(self.prefix_grid().unsqueeze(2), self.geometry[0])}

    def folded_state(self) -> dict[str, torch.Tensor]:
        return {**super().folded_state(), "prefix": self.flat_prefix().detach().clone()}

    def load_folded_state(self, state: Mapping[str, torch.Tensor]) -> None:
        """Become the folded form: the given prefix, no MLP."""
        roles, kv_heads, head_dim = self.geometry
        shape = (self.num_virtual_tokens, sum(roles.values()) * 2 * kv_heads * head_dim)
        self.prefix = self._folded_parameter(state, "prefix", shape)
        self.reparam = None
        if hasattr(self, "prefix_embedding"):
            del self.prefix_embedding
