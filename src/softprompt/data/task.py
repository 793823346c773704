"""Typed task configs (`conf/task/*.yaml`), parsed once: a classification task, a generation task, or a mixture
of tasks of one type (a `tasks` list in the job config; config.mixture builds its node).

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
GROUP = "group"  # task.columns.group: the column k-fold folds keep whole (null: folds by label only)
TASK_TYPES = ("classification", "generation")
MIXTURE = "mixture"
MACRO = "macro"  # a mixture selects by the mean over its tasks of each task's own task.metric


@dataclass(frozen=True)
class TaskConfig:
    """What every task has: where its data comes from, how an example becomes text, and how runs select."""

    name: str
    type: Literal["classification", "generation"]
    metric: str  # model selection maximises val/<metric> (the objective says which are allowed)
    loss: str  # what training minimises (the objective says which are allowed)
    source: Mapping[str, Any]
    splits: Mapping[str, Any]
    columns: Mapping[str, Any]  # our field -> dataset column; `group` (or null): what k-fold folds keep whole
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

    @property
    def grouped_references(self) -> bool:
        """Evaluation scores each distinct source against all its rows' targets (generation tasks may ask it)."""
        return False

    @property
    def group_column(self) -> str | None:
        """The dataset column whose groups (e.g. movies) k-fold folds keep whole, or None."""
        return self.columns.get(GROUP)

    def validate(self) -> None:
        if not self.text_fields:
            raise ConfigError("task.text_fields", self.text_fields, "list at least one text field")
        group = self.group_column
        if group is not None and not (isinstance(group, str) and group):
            raise ConfigError("task.columns.group", group, "must be a dataset column name, or null (folds by label "
                              "only)")
        shared = [f for f, c in self.columns.items() if f != GROUP and group is not None and c == group]
        if shared:
            raise ConfigError("task.columns.group", group, f"the field {shared[0]!r} maps that column too; group by a "
                              "column of its own (or null: folds by label only)")
        if GROUP in self.text_fields:
            raise ConfigError("task.text_fields", self.text_fields, f"{GROUP!r} is the field task.columns.group "
                              "fills (what folds keep whole); give the text field another name")
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
    # Evaluation: `single` scores each row against its own target; `grouped` generates once per distinct source
    # (rows whose text fields are equal) and scores against all of its rows' targets. Training uses every row.
    references: Literal["single", "grouped"]

    @property
    def grouped_references(self) -> bool:
        return self.references == "grouped"

    def validate(self) -> None:
        super().validate()
        if not Template.parse(self.template, self.text_fields).answer_at_end:
            raise ConfigError("task.template", self.template, "a generation task's target follows the template; "
                              "leave {answer} out")


@dataclass(frozen=True)
class MixtureTask:
    """Several tasks trained together: each keeps its template, verbalizer, metric and folds; its examples carry
    its index in `tasks` (the task id). `weights` null: examples-proportional mixing (every training example once
    per epoch); otherwise each epoch draws a share weight / sum(weights) of its examples from each task."""

    name: str
    type: Literal["mixture"]
    metric: Literal["macro"]
    tasks: Mapping[str, Any]  # name -> that task's node, in task-id order
    weights: Mapping[str, Any] | None  # name -> mixing weight > 0, or null
    prompt_init: str  # what method presets read from the task node: the tasks' common prompt_init (or vocab)
    max_length: int = field(metadata=at_least(1))  # ... and the longest of the tasks' max_length

    def validate(self) -> None:
        if len(self.tasks) < 2:
            raise ConfigError("tasks", list(self.tasks), "a mixture lists at least two different tasks")
        members = self.members
        kinds = sorted({m.type for m in members.values()})
        if len(kinds) > 1:
            raise ConfigError("tasks", list(self.tasks), f"mixes task types {', '.join(kinds)}; a mixture's tasks are "
                              "all classification or all generation tasks")
        if self.weights is not None:
            for name in self.tasks:
                weight = self.weights.get(name)
                if isinstance(weight, bool) or not isinstance(weight, int | float) or not weight > 0:
                    raise ConfigError(f"tasks[{name}].weight", weight, "must be a number > 0 for every task (or "
                                      "null for every task: examples-proportional mixing)")

    @property
    def members(self) -> dict[str, TaskConfig]:
        """Each task's typed config, in task-id order; errors name the task (`tasks[rte].max_length`)."""
        return {name: _parse_single(node, f"tasks[{name}]") for name, node in self.tasks.items()}

    @property
    def member_type(self) -> str:
        return next(iter(self.members.values())).type


def _parse_single(task: Mapping[str, Any], prefix: str) -> TaskConfig:
    kind = task.get("type") if isinstance(task, Mapping) else None
    if kind not in TASK_TYPES:
        raise ConfigError(f"{prefix}.type", kind, f"allowed: {', '.join(TASK_TYPES)}")
    schema = ClassificationTask if kind == "classification" else GenerationTask
    return parse(schema, task, prefix, name=f"a {kind} task")


def parse_task(task: Mapping[str, Any]) -> TaskConfig | MixtureTask:
    """The `task` group as its typed config, every key checked."""
    if isinstance(task, Mapping) and task.get("type") == MIXTURE:
        return parse(MixtureTask, task, "task", name="a task mixture")
    return _parse_single(task, "task")


def task_members(task: TaskConfig | MixtureTask) -> dict[str, TaskConfig]:
    """The tasks a run trains on, by name in task-id order: a mixture's members, or the one task."""
    return task.members if isinstance(task, MixtureTask) else {task.name: task}
