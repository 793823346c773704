"""Prefix tuning (Li & Liang 2021, "Prefix-Tuning: Optimizing Continuous Prompts for Generation"): trainable
key/value prefixes in every attention layer, computed while training through an MLP (`reparam=mlp`) from a
smaller trainable embedding; the MLP is computed away afterwards, so the folded form (`reparam=none`) is the
prefix itself, which PEFT stores as PREFIX_TUNING.
"""

from __future__ import annotations

from types import MappingProxyType

import torch
from torch import nn

from softprompt.config.precision import full_precision
from softprompt.methods.config import PrefixConfig
from softprompt.methods.init import RANDOM_INITS, InitContext, random_values
from softprompt.methods.prefixes import KeyValuePrefix
from softprompt.methods.prompt_encoders import zero_last_linear


class PrefixTuning(KeyValuePrefix):
    """A key/value prefix per layer, through an MLP while training (reparam=mlp), or trained directly."""

    Config = PrefixConfig
    # Folded, the prefix is the MLP's output: a plain per-layer tensor that trains directly.
    folded_config = MappingProxyType({"reparam": "none", "zero_init": False})
    folded_away = ("reparam",)

    def __init__(self, config: PrefixConfig, *, init_context: InitContext | None = None, **common) -> None:
        super().__init__(config, **common)
        n, flat = config.num_virtual_tokens, self.flat_width
        self.reparam: nn.Module | None = None
        if config.reparam == "mlp":
            # PEFT's layout: the MLP input is kv_dim wide (the hidden size unless attention is grouped).
            _, kv_heads, head_dim = self.geometry
            kv_dim = kv_heads * head_dim
            random_init = config.init if config.init in RANDOM_INITS else "random_normal"
            self.prefix_embedding = nn.Parameter(random_values(random_init, (n, kv_dim), init_context)
                                                 if init_context is not None else torch.zeros(n, kv_dim))
            self.reparam = nn.Sequential(nn.Linear(kv_dim, config.reparam_hidden), nn.Tanh(),
                                         nn.Linear(config.reparam_hidden, flat))
            if init_context is not None and config.init not in RANDOM_INITS:
                self._fit_mlp_output(self._initial_prefix(config.init, n, init_context))
            elif config.zero_init:
                zero_last_linear(self.reparam)
        else:  # the folded form; without an init its prefix comes from `load_folded_state`
            self.prefix = nn.Parameter(self._initial_prefix(config.init, n, init_context) if init_context is not None
                                       else torch.zeros(n, flat))

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

    def flat_prefix(self) -> torch.Tensor:
        """The prefix, or the MLP's output for the trained embedding, fp32."""
        if self.reparam is None:
            return self.prefix
        with full_precision(self.prefix_embedding):
            return self.reparam(self.prefix_embedding)

    def set_folded(self, tensors: dict[str, torch.Tensor]) -> None:
        """Become the folded form: the given prefix, no MLP."""
        super().set_folded(tensors)
        self.reparam = None
        if hasattr(self, "prefix_embedding"):
            del self.prefix_embedding
