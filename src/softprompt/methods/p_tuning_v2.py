"""P-tuning v2 / deep prompts (Liu et al. 2022, "P-Tuning v2: Prompt Tuning Can Be Comparable to Fine-tuning
Universally Across Scales and Tasks"): a key/value prefix in every attention layer, trained directly (no
reparameterisation), so it is its own folded form; PEFT stores it as PREFIX_TUNING without projection, and a
foreign PREFIX_TUNING adapter imports as this method.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from torch import nn

from softprompt.methods.config import PrefixConfig
from softprompt.methods.init import InitContext
from softprompt.methods.prefixes import KeyValuePrefix


@dataclass(frozen=True)
class PTuningV2Config(PrefixConfig):
    """The prefix's length and init; no reparameterisation (prefix tuning's MLP is `method=prefix_tuning`)."""

    reparam: Literal["none"]


class PTuningV2(KeyValuePrefix):
    """A key/value prefix per layer, trained directly."""

    Config = PTuningV2Config
    # A foreign prefix (PREFIX_TUNING without projection, or saved from training mode) is P-tuning v2.
    peft_imports: ClassVar[Mapping[str, list[str]]] = {"PREFIX_TUNING": ["method=p_tuning_v2"]}

    def __init__(self, config: PTuningV2Config, *, init_context: InitContext | None = None, **common) -> None:
        super().__init__(config, **common)
        n = config.num_virtual_tokens
        # Without an init, the prefix comes from `load_folded_state` (a trained prompt's).
        self.prefix = nn.Parameter(self._initial_prefix(config.init, n, init_context) if init_context is not None
                                   else torch.zeros(n, self.flat_width))
