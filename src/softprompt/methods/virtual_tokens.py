"""Virtual tokens: trainable embeddings placed at the template's [P:n] slots, the machinery every input-level
method shares (prompt tuning, P-tuning, residual prompt tuning, DePT, MPT subclass it).

The embeddings are the prompt, or pass through a reparameterising `encoder` (P-tuning's LSTM or MLP, residual
prompt tuning's residual MLP) that folds away: the folded form is the encoder's output, plain embeddings.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from softprompt.backbones.families import place_prompts
from softprompt.config.precision import full_precision
from softprompt.methods.base import Injection, SoftPromptMethod
from softprompt.methods.config import InputPromptConfig
from softprompt.methods.init import InitContext, initial_embeddings
from softprompt.methods.inspection import nearest_tokens_report
from softprompt.objectives.scoring import Batch


class VirtualTokens(SoftPromptMethod):
    """(num_virtual_tokens, hidden) embeddings at the [P:n] slots, optionally through an encoder that folds away."""

    Config = InputPromptConfig
    injection = Injection.INPUT
    folded_config: Mapping[str, object] = MappingProxyType({"encoder": "none", "match_embedding_std": False})
    folded_away = ("encoder",)

    def __init__(self, config: InputPromptConfig, *, init_context: InitContext | None = None, **common) -> None:
        super().__init__(config, **common)
        self.num_virtual_tokens = config.num_virtual_tokens
        self.init = config.init
        dim = self.backbone.get_input_embeddings().embedding_dim
        # Trainable tensors stay fp32 whatever the backbone dtype; the prompt is cast at injection. Without an
        # init, the tensors come from `load_folded_state` (a trained prompt's).
        initial = (initial_embeddings(config.init, config.num_virtual_tokens, init_context) if init_context is not None
                   else torch.zeros(config.num_virtual_tokens, dim))
        self.prompt = nn.Parameter(initial)
        self.encoder: nn.Module | None = None  # a subclass's reparameterisation

    def inspect(self, tokenizer: PreTrainedTokenizerBase, top_k: int) -> list[str]:
        """Each virtual token's nearest vocabulary tokens by cosine (as Lester et al. 2021 did), its norm against
        the vocabulary's, and the pairwise cosines between virtual tokens."""
        embeddings = self.backbone.get_input_embeddings().weight.detach()
        prompt = self.folded_state()["prompt"]
        return [f"in the input embedding space (d={embeddings.shape[1]})",
                *nearest_tokens_report(prompt, embeddings, tokenizer, top_k)]

    def prompt_embeddings(self) -> torch.Tensor:
        """(num_virtual_tokens, hidden), fp32; the encoder runs once per forward, shared by the whole batch."""
        if self.encoder is None:
            return self.prompt
        with full_precision(self.prompt):
            return self.encoder(self.prompt)

    def embed_inputs(self, batch: Batch) -> torch.Tensor:
        embeds = super().embed_inputs(batch)
        return place_prompts(embeds, self.prompt_embeddings().to(embeds.dtype), batch["slot_ids"])

    # -- folding: the encoder's output, plain embeddings -------------------------------------------------------
    def folded_shapes(self) -> dict[str, tuple[int, ...]]:
        return {"prompt": tuple(self.prompt.shape)}

    def own_folded_state(self) -> dict[str, torch.Tensor]:
        return {"prompt": self.prompt_embeddings()}

    def set_folded(self, tensors: dict[str, torch.Tensor]) -> None:
        """Become the folded form: the given embeddings, no encoder."""
        self.prompt = nn.Parameter(tensors["prompt"])
        self.encoder = None
