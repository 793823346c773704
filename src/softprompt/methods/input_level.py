"""Input-level soft prompts: virtual-token embeddings placed at the template's [P:n] slots.

One mechanism serves two papers:
- prompt tuning (Lester et al. 2021): every slot at the front, no encoder;
- P-tuning (Liu et al. 2021): slots anywhere between anchor text, through an LSTM or MLP encoder.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from torch import nn

from softprompt.errors import ConfigError, require_positive_int
from softprompt.methods.base import SoftPromptModule
from softprompt.methods.init import (
    InitContext,
    check_init_settings,
    initial_embeddings,
)
from softprompt.methods.prompt_encoders import ENCODERS, build_prompt_encoder, match_output_std
from softprompt.methods.scoring import Batch
from softprompt.precision import full_precision


def place_prompts(embeds: torch.Tensor, prompts: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
    """`embeds` with row `prompts[s]` wherever `slots` holds s >= 0 (-1 keeps the token's embedding)."""
    return torch.where(slots[..., None] >= 0, prompts[slots.clamp(min=0)], embeds)


class InputLevelPrompt(SoftPromptModule):
    def __init__(self, *, num_virtual_tokens: int, init: str, init_context: InitContext, encoder: str = "none",
                 encoder_hidden: int | None = None, encoder_dropout: float = 0.0, match_embedding_std: bool = False,
                 initial_state: Mapping[str, torch.Tensor] | None = None, **base) -> None:
        super().__init__(**base)
        self.num_virtual_tokens = num_virtual_tokens
        self.init = init
        dim = self.backbone.get_input_embeddings().embedding_dim
        # Trainable tensors stay fp32 whatever the backbone dtype; the prompt is cast at injection.
        if initial_state is not None:  # init=from_artifact: a trained prompt's folded tensors
            self.prompt = self._folded_parameter(initial_state, "prompt", (num_virtual_tokens, dim))
        else:
            self.prompt = nn.Parameter(initial_embeddings(init, num_virtual_tokens, init_context))
        self.encoder = build_prompt_encoder(encoder, dim, encoder_hidden or dim, encoder_dropout)
        if self.encoder is not None and match_embedding_std:
            match_output_std(self.encoder, self.prompt, float(init_context.embeddings.float().std()))

    @classmethod
    def validate_config(cls, method: Mapping) -> None:
        require_positive_int("method.num_virtual_tokens", method.get("num_virtual_tokens"))
        check_init_settings(method)
        encoder = method.get("encoder", "none")
        if encoder not in ENCODERS:
            raise ConfigError("method.encoder", encoder, f"allowed: {', '.join(ENCODERS)}")
        if method.get("encoder_hidden") is not None:
            require_positive_int("method.encoder_hidden", method["encoder_hidden"])

    @classmethod
    def from_config(cls, method: Mapping, init_context: Callable[[], InitContext], **common) -> InputLevelPrompt:
        return cls(num_virtual_tokens=int(method["num_virtual_tokens"]), init=str(method["init"]),
                   init_context=init_context(), encoder=str(method.get("encoder", "none")),
                   encoder_hidden=method.get("encoder_hidden"),
                   encoder_dropout=float(method.get("encoder_dropout") or 0.0),
                   match_embedding_std=bool(method.get("match_embedding_std", False)),
                   initial_state=cls.artifact_state(method, common["backbone"]), **common)

    def prompt_embeddings(self) -> torch.Tensor:
        """(num_virtual_tokens, hidden), fp32; the encoder runs once per forward, shared by the whole batch."""
        if self.encoder is None:
            return self.prompt
        with full_precision(self.prompt):
            return self.encoder(self.prompt)

    def embed_inputs(self, batch: Batch) -> torch.Tensor:
        embeds = super().embed_inputs(batch)
        return place_prompts(embeds, self.prompt_embeddings().to(embeds.dtype), batch["slot_ids"])

    def folded_state(self) -> dict[str, torch.Tensor]:
        """The encoder's output: plain embeddings."""
        return {**super().folded_state(), "prompt": self.prompt_embeddings().detach().clone()}

    def load_folded_state(self, state: Mapping[str, torch.Tensor]) -> None:
        """Become the folded form: the given embeddings, no encoder."""
        self.prompt = self._folded_parameter(state, "prompt", tuple(self.prompt.shape))
        self.encoder = None
