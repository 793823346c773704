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
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from softprompt.backbones.families import Family, place_prompts
from softprompt.config.precision import full_precision
from softprompt.config.typed import above, at_least
from softprompt.errors import SoftPromptError
from softprompt.methods.base import NotRepresentable, PeftForm
from softprompt.methods.config import InputPromptConfig
from softprompt.methods.init import InitContext
from softprompt.methods.input_level import InputLevelPrompt
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


class DecomposedPrompt(InputLevelPrompt):
    """A short prompt at the slots plus A B added to the input token embeddings, position by position."""

    Config = DecomposedPromptConfig
    folded_config: ClassVar[Mapping[str, Any]] = {}  # nothing to compute away: P, A and B are the folded form
    folded_away: ClassVar[tuple[str, ...]] = ()
    peft_imports: ClassVar[Mapping[str, list[str]]] = {}

    def __init__(self, *, lowrank_rank: int, lowrank_positions: int, lowrank_alpha: float, lowrank_lr: float,
                 initial_state: Mapping[str, torch.Tensor] | None = None, **prompt) -> None:
        own = {k: v for k, v in (initial_state or {}).items() if k not in LOWRANK_KEYS}
        super().__init__(initial_state=own if initial_state is not None else None, **prompt)
        dim = self.prompt.shape[1]
        self.lowrank_lr = lowrank_lr
        self.scaling = lowrank_alpha / math.sqrt(lowrank_rank)
        self.lowrank_a = nn.Parameter(torch.empty(lowrank_positions, lowrank_rank))
        self.lowrank_b = nn.Parameter(torch.zeros(lowrank_rank, dim))
        nn.init.kaiming_uniform_(self.lowrank_a, a=math.sqrt(5))
        if initial_state is not None:  # init=from_artifact: the trained pair too
            self._load_lowrank(initial_state)

    @classmethod
    def from_config(cls, config: DecomposedPromptConfig, init_context: Callable[[], InitContext],
                    initial_state: Mapping[str, torch.Tensor] | None = None, **common) -> DecomposedPrompt:
        return cls(num_virtual_tokens=config.num_virtual_tokens, init=config.init, init_context=init_context(),
                   encoder="none", encoder_hidden=None, encoder_dropout=0.0,
                   match_embedding_std=config.match_embedding_std, lowrank_rank=config.lowrank_rank,
                   lowrank_positions=config.lowrank_positions, lowrank_alpha=config.lowrank_alpha,
                   lowrank_lr=config.lowrank_lr, initial_state=initial_state, **common)

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
        update = self.embedding_update()[positions.clamp(0, len(self.lowrank_a) - 1)]
        embeds = embeds + (update * covered[..., None]).to(embeds.dtype)
        return place_prompts(embeds, self.prompt_embeddings().to(embeds.dtype), batch["slot_ids"])

    # -- folding: P, A and B as they are ----------------------------------------------------------------
    def folded_state(self) -> dict[str, torch.Tensor]:
        return {**super().folded_state(), "lowrank_a": self.lowrank_a.detach().clone(),
                "lowrank_b": self.lowrank_b.detach().clone()}

    def load_folded_state(self, state: Mapping[str, torch.Tensor]) -> None:
        self._load_lowrank(state)
        super().load_folded_state({k: v for k, v in state.items() if k not in LOWRANK_KEYS})

    def _load_lowrank(self, state: Mapping[str, torch.Tensor]) -> None:
        for key in LOWRANK_KEYS:
            if key not in state:
                raise SoftPromptError(f"{self.method_name} needs the folded tensor {key}; found {sorted(state)}")
            shape = tuple(getattr(self, key).shape)
            if tuple(state[key].shape) != shape:
                raise SoftPromptError(f"folded {key} has shape {tuple(state[key].shape)}; {self.method_name} "
                                      f"expects {shape}")
            setattr(self, key, nn.Parameter(state[key].detach().clone().float()))

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
