"""The hard-prompt baseline: the template and verbalizer only, nothing trainable."""

from __future__ import annotations

from softprompt.methods.base import SoftPromptModule


class HardPrompt(SoftPromptModule):
    """Zero-shot scoring through the same template, verbalizer and metrics as the soft methods."""

    num_virtual_tokens = 0
