"""Residual prompt tuning (Razdaibiedina et al., Findings of ACL 2023, "Residual Prompt Tuning: Improving Prompt
Tuning with Residual Reparameterization").

Each virtual token's embedding P_i passes through one shallow network phi shared by all tokens, with a skip
connection (section 3.1, eqs. 3-4): P'_i = Phi(P_i) = phi(P_i) + P_i, where phi is a down-projection to
`residual_hidden` (the bottleneck m), ReLU, an up-projection back to d, then LayerNorm (section 3.2, design
choices). The authors' code (github arazd/ResidualPrompts, `ResMLP`) places them as Linear(d, m), ReLU,
Linear(m, d), Dropout (only if `residual_dropout` > 0), LayerNorm(d), then adds the input; the prompt is
initialised from vocabulary embeddings and trained at lr 0.3. The bottleneck m = 400 matches the parameter
count Xiao et al. 2023 (DPT, Figure 1) report for residual prompt tuning on T5-Large (925K: 100 tokens of
d = 1024 plus the MLP); the code's own default is 800.

P' is the prompt the backbone reads, exactly where prompt tuning's prompt goes (`[P:n]` slots), so the method
is prompt tuning with an encoder: after training the network is computed away (the paper's section 3.3: P is
replaced by its projection Phi(P) and the network discarded), and the artifact holds only the folded (n, d)
embeddings. Folded, it is plain prompt tuning for artifacts, mixed batches, inspection and PEFT export
(PROMPT_TUNING).
PEFT has no residual reparameterisation, so the benchmark's PEFT baseline trains plain PROMPT_TUNING.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal

import torch
from torch import nn

from softprompt.backbones.families import Family
from softprompt.config.typed import at_least, bounded
from softprompt.methods.base import PeftForm
from softprompt.methods.config import InputPromptConfig
from softprompt.methods.init import InitContext
from softprompt.methods.prompt_encoders import match_output_std
from softprompt.methods.virtual_tokens import VirtualTokens


@dataclass(frozen=True)
class ResidualPromptConfig(InputPromptConfig):
    """Prompt tuning's settings plus the residual network; P-tuning's encoder does not combine with it."""

    encoder: Literal["none"]
    residual: bool  # false: the folded form (plain embeddings)
    residual_hidden: int = field(metadata=at_least(1))
    residual_dropout: float = field(metadata=bounded(at_least=0.0, below=1.0))
    residual_layer_norm: bool


class ResidualMLP(nn.Module):
    """P' = phi(P) + P with phi = Linear(d, m), ReLU, Linear(m, d), [Dropout], [LayerNorm(d)]: the authors' ResMLP."""

    def __init__(self, dim: int, hidden: int, dropout: float, layer_norm: bool) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, dim)]
        layers += [nn.Dropout(dropout)] if dropout > 0 else []
        layers += [nn.LayerNorm(dim)] if layer_norm else []
        self.module = nn.Sequential(*layers)

    def forward(self, prompt: torch.Tensor) -> torch.Tensor:
        return self.module(prompt) + prompt


class ResidualPrompt(VirtualTokens):
    """Prompt tuning whose embeddings go through a shared residual MLP while training (folded away after)."""

    Config = ResidualPromptConfig
    folded_config = MappingProxyType({**VirtualTokens.folded_config, "residual": False})
    folded_away = (*VirtualTokens.folded_away, "residual")

    def __init__(self, config: ResidualPromptConfig, *, init_context: InitContext | None = None, **common) -> None:
        super().__init__(config, init_context=init_context, **common)
        if config.residual:
            dim = self.prompt.shape[1]
            self.encoder = ResidualMLP(dim, config.residual_hidden, config.residual_dropout,
                                       config.residual_layer_norm)
            if config.match_embedding_std and init_context is not None:
                self._match_embedding_std(float(init_context.embeddings.float().std()))

    def _match_embedding_std(self, target_std: float) -> None:
        """Scale the residual branch so that phi(P) starts at the word embeddings' std (LayerNorm alone gives std
        1, far above a small model's embeddings): the LayerNorm's affine weight, else the last Linear layer."""
        norm = self.encoder.module[-1]
        if isinstance(norm, nn.LayerNorm):
            with torch.no_grad():
                norm.weight.fill_(target_std)
        else:
            match_output_std(self.encoder.module, self.prompt, target_std)

    @classmethod
    def peft_form(cls, config: ResidualPromptConfig, family: Family) -> PeftForm:
        """The folded prompt is a plain PROMPT_TUNING prompt (PEFT cannot train the residual network itself)."""
        return PeftForm("PROMPT_TUNING", "prompt", {}, {})
