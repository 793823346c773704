"""Typed task configs (`conf/task/*.yaml`), parsed once: a classification task or a generation task.

Every value comes from the task's yaml (or the command line); these dataclasses say what is allowed and
check what belongs together (a template holding every text field, a word for every label, ...).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from softprompt.config.typed import at_least, parse
from softprompt.data.templates import Template
from softprompt.data.verbalizer import label_words
from softprompt.errors import ConfigError

LABEL = "label"  # the field holding a classification example's label
TARGET = "target"  # the field holding a generation task's target text
TASK_TYPES = ("classification", "generation")


@dataclass(frozen=True)
class TaskConfig:
    """What every task has: where its data comes from, how an example becomes text, and how runs select."""

    name: str
    type: Literal["classification", "generation"]
    metric: str  # model selection maximises val/<metric> (the objective says which are allowed)
    loss: str  # what training minimises (the objective says which are allowed)
    source: Mapping[str, Any]
    splits: Mapping[str, Any]
    columns: Mapping[str, Any]  # our field -> dataset column
    text_fields: list[str]
    template: str
    max_length: int = field(metadata=at_least(1))  # the task's own tokens; prompts come on top
    prompt_init: str  # the init prompt-tuning presets use for this task (class_labels has no meaning for text)

    @property
    def is_generation(self) -> bool:
        return self.type == "generation"

    @property
    def answer_field(self) -> str:
        return TARGET if self.is_generation else LABEL

    @property
    def label_names(self) -> list[str]:
        return []

    def validate(self) -> None:
        if not self.text_fields:
            raise ConfigError("task.text_fields", self.text_fields, "list at least one text field")
        for name in [*self.text_fields, self.answer_field]:
            if name not in self.columns:
                raise ConfigError("task.columns", dict(self.columns), f"map the field {name!r} to a dataset column")
        Template.parse(self.template, self.text_fields)


@dataclass(frozen=True)
class ClassificationTask(TaskConfig):
    labels: list[str]
    verbalizer: Mapping[str, Any]  # label -> word(s) scored at the answer position

    @property
    def label_names(self) -> list[str]:
        return [str(label) for label in self.labels]

    def validate(self) -> None:
        super().validate()
        if len(self.labels) < 2:
            raise ConfigError("task.labels", self.labels, "list at least two label names")
        label_words(self.label_names, self.verbalizer)


@dataclass(frozen=True)
class GenerationTask(TaskConfig):
    target_prefix: str  # put before the target text (" " for a word-level continuation)
    max_target_length: int = field(metadata=at_least(1))  # target tokens, the closing eos included
    generation: Mapping[str, Any]  # decoding settings (objectives.decoding.DecodingConfig)

    def validate(self) -> None:
        super().validate()
        if not Template.parse(self.template, self.text_fields).answer_at_end:
            raise ConfigError("task.template", self.template, "a generation task's target follows the template; "
                              "leave {answer} out")


def parse_task(task: Mapping[str, Any]) -> TaskConfig:
    """The `task` group as its typed config, every key checked."""
    kind = task.get("type") if isinstance(task, Mapping) else None
    if kind not in TASK_TYPES:
        raise ConfigError("task.type", kind, f"allowed: {', '.join(TASK_TYPES)}")
    schema = ClassificationTask if kind == "classification" else GenerationTask
    return parse(schema, task, "task", name=f"a {kind} task")
