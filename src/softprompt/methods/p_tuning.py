"""P-tuning (Liu et al. 2021, "GPT Understands, Too"): virtual-token embeddings placed at [P:n] slots anywhere in
the template, between anchor text, computed by a prompt encoder (a bidirectional LSTM then an MLP, or an MLP) from
trainable embeddings. After training the encoder is computed away: the folded form is its output, plain
embeddings (`encoder=none`), which PEFT stores as P_TUNING's saved prompt and imports as P-tuning without an
encoder.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

from softprompt.backbones.families import Family
from softprompt.methods.base import PeftForm
from softprompt.methods.config import InputPromptConfig
from softprompt.methods.init import InitContext
from softprompt.methods.prompt_encoders import build_prompt_encoder, match_output_std
from softprompt.methods.virtual_tokens import VirtualTokens


@dataclass(frozen=True)
class PTuningConfig(InputPromptConfig):
    """The virtual tokens' length, init and slots, and the prompt encoder (`none`: the folded form)."""


class PTuning(VirtualTokens):
    """Virtual-token embeddings at the [P:n] slots, through an LSTM or MLP prompt encoder while training."""

    Config = PTuningConfig
    # A foreign P-tuning prompt (the encoder's output, as PEFT saves it) is P-tuning without its encoder.
    peft_imports: ClassVar[Mapping[str, list[str]]] = {"P_TUNING": ["method=p_tuning", "method.encoder=none"]}

    def __init__(self, config: PTuningConfig, *, init_context: InitContext | None = None, **common) -> None:
        super().__init__(config, init_context=init_context, **common)
        dim = self.prompt.shape[1]
        self.encoder = build_prompt_encoder(config.encoder, dim, config.encoder_hidden or dim, config.encoder_dropout)
        if self.encoder is not None and config.match_embedding_std and init_context is not None:
            match_output_std(self.encoder, self.prompt, float(init_context.embeddings.float().std()))

    @classmethod
    def peft_form(cls, config: PTuningConfig, family: Family) -> PeftForm:
        """P_TUNING with the same encoder (PEFT stores and reads back the encoder's output); the folded form,
        without an encoder, is PROMPT_TUNING."""
        if config.encoder == "none":
            return PeftForm("PROMPT_TUNING", "prompt", {}, {})
        encoder = {"encoder_reparameterization_type": config.encoder.upper(),
                   **({"encoder_hidden_size": config.encoder_hidden} if config.encoder_hidden else {})}
        return PeftForm("P_TUNING", "prompt", encoder, encoder)
