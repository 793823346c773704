"""Where a method's virtual tokens go in the task template."""

from __future__ import annotations

from collections.abc import Mapping

from softprompt.errors import ConfigError

SLOT_LAYOUTS = ("front", "template", "none")


def prompt_template(method: Mapping, task_template: str) -> str:
    """The template the DataModule renders.

    `front`: every virtual token before the task template (prompt tuning, PEFT's layout);
    `template`: `method.template`, with [P:n] slots anywhere between anchor text (P-tuning);
    `none`: the task template alone (attention-level methods, hard prompts).
    """
    layout = method.get("slots", "none")
    if layout == "front":
        return f"[P:{int(method['num_virtual_tokens'])}]{task_template}"
    if layout == "template":
        if not method.get("template"):
            raise ConfigError("method.template", method.get("template"), "slots=template needs a template with [P:n]")
        return str(method["template"])
    if layout == "none":
        return task_template
    raise ConfigError("method.slots", layout, f"allowed: {', '.join(SLOT_LAYOUTS)}")
