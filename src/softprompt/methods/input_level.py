"""Input-level soft prompts: virtual-token embeddings placed at the template's [P:n] slots.

One mechanism serves two papers:
- prompt tuning (Lester et al. 2021): every slot at the front, no encoder;
- P-tuning (Liu et al. 2021): slots anywhere between anchor text, through an LSTM or MLP encoder.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import ClassVar

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from softprompt.backbones.families import Family, place_prompts
from softprompt.config.precision import full_precision
from softprompt.methods.base import PeftForm, SoftPromptModule
from softprompt.methods.config import InputPromptConfig
from softprompt.methods.init import InitContext, initial_embeddings
from softprompt.methods.inspection import nearest_tokens_report
from softprompt.methods.prompt_encoders import build_prompt_encoder, match_output_std
from softprompt.objectives.scoring import Batch


class InputLevelPrompt(SoftPromptModule):
    """Prompt tuning (front slots, no encoder) and P-tuning (slots anywhere, LSTM or MLP encoder)."""

    Config = InputPromptConfig
    injection = "input"
    folded_config = MappingProxyType({"encoder": "none", "match_embedding_std": False})  # the encoder folded away
    folded_away = ("encoder",)

    def __init__(self, *, num_virtual_tokens: int, init: str, init_context: InitContext, encoder: str,
                 encoder_hidden: int | None, encoder_dropout: float, match_embedding_std: bool,
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
    def from_config(cls, config: InputPromptConfig, init_context: Callable[[], InitContext],
                    initial_state: Mapping[str, torch.Tensor] | None = None, **common) -> InputLevelPrompt:
        return cls(num_virtual_tokens=config.num_virtual_tokens, init=config.init, init_context=init_context(),
                   encoder=config.encoder, encoder_hidden=config.encoder_hidden,
                   encoder_dropout=config.encoder_dropout, match_embedding_std=config.match_embedding_std,
                   initial_state=initial_state, **common)

    @classmethod
    def peft_form(cls, config: InputPromptConfig, family: Family) -> PeftForm:
        """PROMPT_TUNING, or P_TUNING with the same encoder (PEFT stores and reads back the encoder's output)."""
        if config.encoder == "none":
            return PeftForm("PROMPT_TUNING", "prompt", {}, {})
        encoder = {"encoder_reparameterization_type": config.encoder.upper(),
                   **({"encoder_hidden_size": config.encoder_hidden} if config.encoder_hidden else {})}
        return PeftForm("P_TUNING", "prompt", encoder, encoder)

    # A foreign prompt becomes prompt tuning; a foreign P-tuning prompt (the encoder's output, as PEFT saves it)
    # P-tuning without its encoder.
    peft_imports: ClassVar[Mapping[str, list[str]]] = {
        "PROMPT_TUNING": ["method=prompt_tuning"], "P_TUNING": ["method=p_tuning", "method.encoder=none"]}

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

    def folded_state(self) -> dict[str, torch.Tensor]:
        """The encoder's output: plain embeddings."""
        return {**super().folded_state(), "prompt": self.prompt_embeddings().detach().clone()}

    def load_folded_state(self, state: Mapping[str, torch.Tensor]) -> None:
        """Become the folded form: the given embeddings, no encoder."""
        self.prompt = self._folded_parameter(state, "prompt", tuple(self.prompt.shape))
        self.encoder = None
