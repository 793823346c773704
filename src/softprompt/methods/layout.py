"""Where a method's virtual tokens go in the task template."""

from __future__ import annotations

from softprompt.methods.config import MethodConfig


def prompt_template(method: MethodConfig, task_template: str) -> str:
    """The template the DataModule renders.

    `front`: every virtual token before the task template (prompt tuning, PEFT's layout);
    `template`: `method.template`, with [P:n] slots anywhere between anchor text (P-tuning);
    `none`: the task template alone (attention-level methods, hard prompts).
    """
    if method.slots == "front":
        return f"[P:{method.num_virtual_tokens}]{task_template}"
    if method.slots == "template":
        return str(method.template)  # an InputPromptConfig, which requires it with slots=template
    return task_template
