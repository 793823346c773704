"""The hard-prompt baseline: the template and verbalizer only, nothing trainable.

With `method.num_demonstrations=k` the DataModule inserts k solved training examples (seeded,
stratified; each the template with its answer in place) after the input's leading special tokens,
which makes this the few-shot in-context baseline.
"""

from __future__ import annotations

from softprompt.backbones.families import Family
from softprompt.errors import ConfigError
from softprompt.methods.base import NotRepresentable, PeftForm, SoftPromptMethod
from softprompt.methods.config import NoPromptConfig


class HardPrompt(SoftPromptMethod):
    """Zero-/few-shot scoring through the same template, verbalizer and metrics as the soft methods."""

    Config = NoPromptConfig
    trains = False

    def __init__(self, config: NoPromptConfig, *, init_context: None = None, **common) -> None:
        super().__init__(config, **common)
        if self.adapter.needs_head:
            raise ConfigError("method", self.method_name, f"a {self.adapter.family} backbone scores labels with a "
                              "trained head, so it has no zero-shot baseline; use a soft-prompt method")

    @classmethod
    def peft_form(cls, config: NoPromptConfig, family: Family) -> PeftForm:
        raise NotRepresentable(f"{config.name} has no trained tensors: there is nothing to export (its template and "
                               "demonstrations are in softprompt.json)")
