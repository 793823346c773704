"""Attention-level soft prompts: key/value prefixes in every attention layer.

Prefix tuning (Li & Liang 2021) computes the prefix through an MLP (`reparam=mlp`); deep prompts /
P-tuning v2 (Liu et al. 2022) train it directly (`reparam=none`). The flat layout of the prefix,
(num_virtual_tokens, layers x 2 x kv_heads x head_dim), is PEFT's, so tensors move across unchanged.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from torch import nn
from transformers import PreTrainedModel

from softprompt.backbones.attention_prefix import (
    CAPTURE_KWARG,
    PREFIX_KWARG,
    KVCapture,
    PrefixKV,
    attention_layers,
    enable_prefix_injection,
)
from softprompt.errors import ConfigError, require_positive_int
from softprompt.methods.base import SoftPromptModule
from softprompt.methods.init import (
    RANDOM_INITS,
    InitContext,
    check_init_settings,
    initial_token_ids,
    random_values,
)
from softprompt.methods.prompt_encoders import zero_last_linear
from softprompt.precision import full_precision

REPARAMS = ("mlp", "none")


def prefix_geometry(model: PreTrainedModel) -> tuple[dict[str, int], int, int]:
    """(layers per attention role, key/value heads, head dim)."""
    config = model.config.get_text_config()
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or getattr(config, "d_kv", None) or config.hidden_size // heads
    return attention_layers(model), kv_heads, head_dim


def prefix_kv(grid: torch.Tensor, roles: Mapping[str, int], visible: torch.Tensor | None = None) -> PrefixKV:
    """PrefixKV from a (layers, 2, batch or 1, kv_heads, P, head_dim) grid, whose layers are laid out role after
    role; `visible` (batch, P) marks each row's real prefix columns (mixed-prompt batches), None = all."""
    keys, values, start = {}, {}, 0
    for role, count in roles.items():
        keys[role], values[role] = list(grid[start:start + count, 0]), list(grid[start:start + count, 1])
        start += count
    return PrefixKV(keys=keys, values=values, visible=visible)


class AttentionLevelPrefix(SoftPromptModule):
    def __init__(self, *, num_virtual_tokens: int, init: str, init_context: InitContext, reparam: str = "mlp",
                 reparam_hidden: int = 512, zero_init: bool = False,
                 initial_state: Mapping[str, torch.Tensor] | None = None, **base) -> None:
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
    def validate_config(cls, method: Mapping) -> None:
        require_positive_int("method.num_virtual_tokens", method.get("num_virtual_tokens"))
        check_init_settings(method)
        if method.get("reparam") not in REPARAMS:
            raise ConfigError("method.reparam", method.get("reparam"), f"allowed: {', '.join(REPARAMS)}")
        if method["reparam"] == "mlp":
            require_positive_int("method.reparam_hidden", method.get("reparam_hidden"))

    @classmethod
    def from_config(cls, method: Mapping, init_context: Callable[[], InitContext], **common) -> AttentionLevelPrefix:
        return cls(num_virtual_tokens=int(method["num_virtual_tokens"]), init=str(method["init"]),
                   init_context=init_context(), reparam=str(method["reparam"]),
                   reparam_hidden=int(method.get("reparam_hidden") or 0),
                   zero_init=bool(method.get("zero_init", False)),
                   initial_state=cls.artifact_state(method, common["backbone"]), **common)

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
