"""Input-level soft prompts: virtual-token embeddings placed at the template's [P:n] slots.

Prompt tuning (Lester et al. 2021) is this module with every slot at the front of the input.
"""

from __future__ import annotations

import torch
from torch import nn

from softprompt.methods.base import SoftPromptModule
from softprompt.methods.init import InitContext, initial_embeddings
from softprompt.methods.scoring import Batch


class InputLevelPrompt(SoftPromptModule):
    def __init__(self, *, num_virtual_tokens: int, init: str, init_context: InitContext, **base) -> None:
        super().__init__(**base)
        self.num_virtual_tokens = num_virtual_tokens
        self.init = init
        # The prompt stays fp32 whatever the backbone dtype; it is cast at injection time.
        self.prompt = nn.Parameter(initial_embeddings(init, num_virtual_tokens, init_context))

    def prompt_embeddings(self) -> torch.Tensor:
        """(num_virtual_tokens, hidden): computed once per step, shared by the whole batch."""
        return self.prompt

    def embed_inputs(self, batch: Batch) -> torch.Tensor:
        embeds = super().embed_inputs(batch)
        prompts = self.prompt_embeddings().to(embeds.dtype)
        slots = batch["slot_ids"]
        return torch.where(slots[..., None] >= 0, prompts[slots.clamp(min=0)], embeds)
