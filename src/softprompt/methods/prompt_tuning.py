"""Prompt tuning (Lester et al. 2021, "The Power of Scale for Parameter-Efficient Prompt Tuning"): n trainable
virtual-token embeddings before the input (`[P:n]` front slots), nothing else trained; the embeddings are the
prompt, so the folded form is the prompt itself, which PEFT stores as PROMPT_TUNING.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar, Literal

from softprompt.backbones.families import Family
from softprompt.methods.base import PeftForm
from softprompt.methods.config import InputPromptConfig
from softprompt.methods.virtual_tokens import VirtualTokens


@dataclass(frozen=True)
class PromptTuningConfig(InputPromptConfig):
    """The virtual tokens' length, init and slots; no encoder (P-tuning's is `method=p_tuning`)."""

    encoder: Literal["none"]


class PromptTuning(VirtualTokens):
    """Virtual-token embeddings at the [P:n] slots, trained directly."""

    Config = PromptTuningConfig
    peft_imports: ClassVar[Mapping[str, list[str]]] = {"PROMPT_TUNING": ["method=prompt_tuning"]}

    @classmethod
    def peft_form(cls, config: PromptTuningConfig, family: Family) -> PeftForm:
        return PeftForm("PROMPT_TUNING", "prompt", {}, {})
