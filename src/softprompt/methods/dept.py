"""DePT: decomposed prompt tuning (Shi & Lipani, ICLR 2024, "DePT: Decomposed Prompt Tuning for
Parameter-Efficient Fine-tuning").

A prompt-tuning prompt of length l is decomposed into a shorter prompt P (m x d, the `[P:m]` slots) and a
low-rank pair A (s x r), B (r x d) whose product updates the frozen input token embeddings E position by
position (section 2.2, eq. 2: E' = E + A B, s the maximum input length; the loss is prompt tuning's with P
and E'), and P and (A, B) train with two learning rates (section 2.2). Following the authors' code
(github ZhengxiangShi/DePT, peft/tuners/prompt_tuning_lora.py): A starts Kaiming-uniform (a = sqrt(5)), B at
zero (so E' = E at step 0), and the update is scaled by lora_alpha / sqrt(r) (`lowrank_alpha`, their 8).
DePT keeps the trainable size of the prompt it decomposes: the authors' script for T5-Base (README) uses
m = 40, r = 45 with s = 256, the size of a 100-token prompt (40 x 768 + 45 x (256 + 768) = 100 x 768).

Position p here is a token's index among the input's own tokens: real (unpadded) tokens that are not
virtual-token slots, counted from the first, so padding and batch-mates never move it. Tokens at p >= s
(only possible beyond task.max_length, i.e. with in-context demonstrations) get no update; target tokens of
generation tasks are fed unchanged, in teacher forcing and in decoding alike.

Folding: the update depends on the position, not on the prompt, so nothing folds away: the artifact holds
P, A and B. PEFT cannot represent the update (PROMPT_TUNING stores P only), and mixed batches cannot
reproduce it row by row, so both refuse in one line.

Section and equation numbers follow secondary sources; they were not checked against the paper's own text
(not reachable offline); the behaviour was checked against the authors' code.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedTokenizerBase

from softprompt.backbones.families import Family, place_prompts
from softprompt.config.precision import full_precision
from softprompt.config.typed import above, at_least
from softprompt.methods.base import NotRepresentable, PeftForm
from softprompt.methods.config import InputPromptConfig
from softprompt.methods.init import InitContext
from softprompt.methods.virtual_tokens import VirtualTokens
from softprompt.objectives.scoring import Batch

LOWRANK_KEYS = ("lowrank_a", "lowrank_b")


@dataclass(frozen=True)
class DecomposedPromptConfig(InputPromptConfig):
    """Prompt tuning's settings (a shorter prompt) plus the low-rank update of the input embeddings."""

    encoder: Literal["none"]
    lowrank_rank: int = field(metadata=at_least(1))  # r
    lowrank_positions: int = field(metadata=at_least(1))  # s: positions the update covers
    lowrank_alpha: float = field(metadata=above(0.0))  # the update is scaled by alpha / sqrt(r)
    lowrank_lr: float = field(metadata=above(0.0))  # A and B's learning rate (the prompt's: optimizer.lr)


class DecomposedPrompt(VirtualTokens):
    """A short prompt at the slots plus A B added to the input token embeddings, position by position."""

    Config = DecomposedPromptConfig
    folded_config: ClassVar[Mapping[str, Any]] = {}  # nothing to compute away: P, A and B are the folded form
    folded_away: ClassVar[tuple[str, ...]] = ()

    def __init__(self, config: DecomposedPromptConfig, *, init_context: InitContext | None = None, **common) -> None:
        super().__init__(config, init_context=init_context, **common)
        dim = self.prompt.shape[1]
        self.lowrank_lr = config.lowrank_lr
        self.scaling = config.lowrank_alpha / math.sqrt(config.lowrank_rank)
        self.lowrank_a = nn.Parameter(torch.empty(config.lowrank_positions, config.lowrank_rank))
        self.lowrank_b = nn.Parameter(torch.zeros(config.lowrank_rank, dim))
        nn.init.kaiming_uniform_(self.lowrank_a, a=math.sqrt(5))

    @classmethod
    def peft_form(cls, config: DecomposedPromptConfig, family: Family) -> PeftForm:
        raise NotRepresentable(f"{config.name} also adds a low-rank update (A B) to the input token embeddings, "
                               "position by position; PEFT's PROMPT_TUNING holds the prompt only")

    # -- training -------------------------------------------------------------------------------------
    def parameter_groups(self) -> list[dict[str, Any]]:
        """The prompt at the optimizer's lr, A and B at `lowrank_lr` (the paper's two learning rates)."""
        trainable = [(name, p) for name, p in self.named_parameters() if p.requires_grad]
        return [{"params": [p for name, p in trainable if name not in LOWRANK_KEYS]},
                {"params": [p for name, p in trainable if name in LOWRANK_KEYS], "lr": self.lowrank_lr}]

    # -- injection ---------------------------------------------------------------------------------------
    def embedding_update(self) -> torch.Tensor:
        """(s, d), fp32: the scaled low-rank update of each input position."""
        with full_precision(self.lowrank_a):
            return self.scaling * (self.lowrank_a @ self.lowrank_b)

    def embed_inputs(self, batch: Batch) -> torch.Tensor:
        embeds = self.adapter.embed(self.backbone, batch["input_ids"])
        own = (batch["attention_mask"] > 0) & (batch["slot_ids"] < 0)  # the input's own tokens
        positions = own.long().cumsum(-1) - 1
        covered = own & (positions < len(self.lowrank_a))
        # F.embedding, not indexing: its backward sums a position's gradients in a fixed order (place_prompts' note).
        update = F.embedding(positions.clamp(0, len(self.lowrank_a) - 1), self.embedding_update())
        embeds = embeds + (update * covered[..., None]).to(embeds.dtype)
        return place_prompts(embeds, self.prompt_embeddings().to(embeds.dtype), batch["slot_ids"])

    # -- folding: P, A and B as they are ----------------------------------------------------------------
    def folded_shapes(self) -> dict[str, tuple[int, ...]]:
        return {**super().folded_shapes(), **{key: tuple(getattr(self, key).shape) for key in LOWRANK_KEYS}}

    def own_folded_state(self) -> dict[str, torch.Tensor]:
        return {**super().own_folded_state(), **{key: getattr(self, key) for key in LOWRANK_KEYS}}

    def set_folded(self, tensors: dict[str, torch.Tensor]) -> None:
        super().set_folded(tensors)
        for key in LOWRANK_KEYS:
            setattr(self, key, nn.Parameter(tensors[key]))

    def inspect(self, tokenizer: PreTrainedTokenizerBase, top_k: int) -> list[str]:
        """The prompt's nearest vocabulary tokens (as prompt tuning's), then the size of each position's update
        against the vocabulary's mean embedding norm."""
        lines = super().inspect(tokenizer, top_k)
        norms = self.embedding_update().detach().norm(dim=-1)
        vocab = self.backbone.get_input_embeddings().weight.detach().float().norm(dim=-1).mean()
        peak = int(norms.argmax())
        return [*lines, f"low-rank update A B of the input embeddings: rank {self.lowrank_b.shape[0]} over "
                        f"{len(norms)} positions, scale {self.scaling:.4f}",
                f"update L2 norm per position: mean {float(norms.mean()):.4f}, max {float(norms[peak]):.4f} "
                f"at position {peak} (vocabulary mean embedding norm {float(vocab):.4f})"]
