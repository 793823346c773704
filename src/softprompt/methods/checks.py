"""Config checks of a method and of the task it is trained on, before anything loads: one line naming the key."""

from __future__ import annotations

from collections.abc import Mapping

from softprompt.data.task import MixtureTask, TaskConfig, parse_task
from softprompt.data.templates import Template
from softprompt.errors import ConfigError
from softprompt.methods import MethodConfig, method_config
from softprompt.methods.layout import prompt_template
from softprompt.objectives import check_objective_config


def check_method(method: Mapping) -> MethodConfig:
    """The method group, parsed by its class's typed Config."""
    return method_config(method)


def check_task(task: Mapping, method: MethodConfig | Mapping) -> TaskConfig | MixtureTask:
    """The task group, parsed, and checked together with the method's template (its slots) and init (each task of
    a mixture); `method`: its parsed config (or the group, parsed here)."""
    config = parse_task(task)
    check_objective_config(config)
    settings = method if isinstance(method, MethodConfig) else method_config(method)
    if isinstance(config, MixtureTask):
        if settings.num_demonstrations:
            raise ConfigError("method.num_demonstrations", settings.num_demonstrations, "in-context demonstrations "
                              "are drawn per task; a task mixture trains without them (set 0)")
        for name, member in config.members.items():
            _check_member(member, settings, f"tasks[{name}]")
        return config
    _check_member(config, settings, "task")
    return config


def _check_member(config: TaskConfig, settings: MethodConfig, task_key: str) -> None:
    key = "method.template" if settings.slots == "template" else f"{task_key}.template"
    template = Template.parse(prompt_template(settings, config.template), config.text_fields, key=key)
    if settings.slots != "none" and template.num_virtual_tokens != settings.num_virtual_tokens:
        raise ConfigError("method.num_virtual_tokens", settings.num_virtual_tokens,
                          f"the template {template.text!r} has {template.num_virtual_tokens} slots")
    if config.is_generation and settings.init == "class_labels":
        raise ConfigError("method.init", "class_labels", "a generation task has no class labels; use vocab, "
                          "text, random_uniform or random_normal")
