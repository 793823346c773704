"""The hard-prompt baseline: the template and verbalizer only, nothing trainable.

With `method.num_demonstrations=k` the DataModule inserts k solved training examples (seeded,
stratified; each the template with its answer in place) after the input's leading special tokens,
which makes this the few-shot in-context baseline.
"""

from __future__ import annotations

from collections.abc import Mapping

from softprompt.errors import ConfigError
from softprompt.methods.base import SoftPromptModule


class HardPrompt(SoftPromptModule):
    """Zero-/few-shot scoring through the same template, verbalizer and metrics as the soft methods."""

    trains = False

    def __init__(self, **common) -> None:
        super().__init__(**common)
        if self.adapter.needs_head:
            raise ConfigError("method", self.method_name, f"a {self.adapter.family} backbone scores labels with a "
                              "trained head, so it has no zero-shot baseline; use a soft-prompt method")

    @classmethod
    def validate_config(cls, method: Mapping) -> None:
        for key in ("init", "num_virtual_tokens"):
            if method.get(key):
                raise ConfigError(f"method.{key}", method[key],
                                  f"{method.get('name')} has no trainable tensors; use null (or 0)")
        demos = method.get("num_demonstrations", 0)
        if isinstance(demos, bool) or not isinstance(demos, int) or demos < 0:
            raise ConfigError("method.num_demonstrations", demos, "must be an integer >= 0")
