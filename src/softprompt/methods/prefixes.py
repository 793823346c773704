"""Key/value prefixes: the machinery every attention-level prefix method shares (prefix tuning, P-tuning v2 and
cartridges subclass it).

A prefix is `num_virtual_tokens` keys and values in every attention layer, in PEFT's flat layout
(num_virtual_tokens, layers x 2 x kv_heads x head_dim), so tensors move across unchanged. Real tokens' positions
start after it (`position_offset`). The folded form is the flat prefix itself; PEFT stores it as PREFIX_TUNING.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
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
from softprompt.methods.base import Injection, NotRepresentable, PeftForm, SoftPromptMethod
from softprompt.methods.config import PrefixConfig, PromptConfig
from softprompt.methods.init import RANDOM_INITS, InitContext, initial_token_ids, random_values
from softprompt.methods.inspection import prefix_norms_report


def prefix_geometry(model: PreTrainedModel) -> tuple[dict[str, int], int, int]:
    """(layers per attention role, key/value heads, head dim)."""
    config = model.config.get_text_config()
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or getattr(config, "d_kv", None) or config.hidden_size // heads
    return attention_layers(model), kv_heads, head_dim


class KeyValuePrefix(SoftPromptMethod):
    """A key/value prefix per attention layer; a subclass creates the tensors behind `flat_prefix`."""

    Config = PromptConfig
    injection = Injection.ATTENTION

    def __init__(self, config: PromptConfig, **common) -> None:
        super().__init__(config, **common)
        enable_prefix_injection(self.backbone)
        self.num_virtual_tokens = self.position_offset = config.num_virtual_tokens
        self.init = config.init
        self.geometry = prefix_geometry(self.backbone)

    @property
    def flat_width(self) -> int:
        """layers x 2 x kv_heads x head_dim: one virtual token's keys and values in every layer."""
        roles, kv_heads, head_dim = self.geometry
        return sum(roles.values()) * 2 * kv_heads * head_dim

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
        return self.prefix

    def prefix_grid(self) -> torch.Tensor:
        """(layers, 2, kv_heads, num_virtual_tokens, head_dim): each layer's key (0) and value (1) prefix."""
        roles, kv_heads, head_dim = self.geometry
        grid = self.flat_prefix().view(self.num_virtual_tokens, sum(roles.values()), 2, kv_heads, head_dim)
        return grid.permute(1, 2, 3, 0, 4)

    def attention_kwargs(self) -> dict[str, PrefixKV]:
        # Computed once per forward; a batch axis of 1 broadcasts over the batch.
        return {PREFIX_KWARG: prefix_kv(self.prefix_grid().unsqueeze(2), self.geometry[0])}

    # -- folding: the flat prefix ---------------------------------------------------------------------------
    def folded_shapes(self) -> dict[str, tuple[int, ...]]:
        return {"prefix": (self.num_virtual_tokens, self.flat_width)}

    def own_folded_state(self) -> dict[str, torch.Tensor]:
        return {"prefix": self.flat_prefix()}

    def set_folded(self, tensors: dict[str, torch.Tensor]) -> None:
        self.prefix = torch.nn.Parameter(tensors["prefix"])
