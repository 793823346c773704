"""Where a method's virtual tokens go in the task template."""

from __future__ import annotations

from collections.abc import Mapping

from softprompt.errors import ConfigError

SLOT_LAYOUTS = ("front", "none")


def prompt_template(method: Mapping, task_template: str) -> str:
    """`front`: all virtual tokens before the task template (prompt tuning); `none`: no slots."""
    layout = method.get("slots", "none")
    if layout == "front":
        return f"[P:{int(method['num_virtual_tokens'])}]{task_template}"
    if layout == "none":
        return task_template
    raise ConfigError("method.slots", layout, f"allowed: {', '.join(SLOT_LAYOUTS)}")
