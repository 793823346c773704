"""The task side of a run: what it optimises and measures (label scores or target text).

`build_objective(task, ...)` returns the task type's Objective; the method module calls it for its loss,
evaluation and predictions.
"""

from __future__ import annotations

from transformers import PreTrainedTokenizerBase

from softprompt.backbones.families import FamilyAdapter
from softprompt.data.task import GenerationTask, MixtureTask, TaskConfig
from softprompt.data.verbalizer import label_token_ids, label_words
from softprompt.errors import ConfigError
from softprompt.objectives.base import STAGES, Objective
from softprompt.objectives.classification import ClassificationObjective
from softprompt.objectives.decoding import DecodingConfig
from softprompt.objectives.generation import GenerationObjective, TextMetrics
from softprompt.objectives.mixture import MixtureObjective

__all__ = ["STAGES", "ClassificationObjective", "GenerationObjective", "MixtureObjective", "Objective", "TextMetrics",
           "build_objective", "check_objective_config"]

OBJECTIVES: dict[str, type[Objective]] = {"classification": ClassificationObjective,
                                          "generation": GenerationObjective}


def check_objective_config(task: TaskConfig | MixtureTask, key: str = "task") -> None:
    """`task.metric`, `task.loss` and a generation task's decoding settings (each task's, for a mixture), checked
    before anything loads; `key` names the task node in errors."""
    if isinstance(task, MixtureTask):
        for name, member in task.members.items():
            check_objective_config(member, f"tasks[{name}]")
        return
    objective = OBJECTIVES[task.type]
    if task.metric not in objective.METRICS:
        raise ConfigError(f"{key}.metric", task.metric, f"a {task.type} task selects by one of: "
                          f"{', '.join(objective.METRICS)}")
    if task.loss not in objective.LOSSES:
        raise ConfigError(f"{key}.loss", task.loss, f"a {task.type} task trains with one of: "
                          f"{', '.join(objective.LOSSES)}")
    if isinstance(task, GenerationTask):
        DecodingConfig.from_config(task.generation)


def build_objective(task: TaskConfig | MixtureTask, adapter: type[FamilyAdapter], tokenizer: PreTrainedTokenizerBase,
                    hidden_size: int, prefix: str = "") -> Objective:
    """The task's objective (a mixture's: each task's, logging under `<task>/`); a classification task's
    verbalizer is tokenised and checked here."""
    check_objective_config(task)
    if isinstance(task, MixtureTask):
        return MixtureObjective({name: build_objective(member, adapter, tokenizer, hidden_size, f"{name}/")
                                 for name, member in task.members.items()})
    if isinstance(task, GenerationTask):
        return GenerationObjective(tokenizer, DecodingConfig.from_config(task.generation), adapter, task.metric,
                                   prefix, grouped=task.grouped_references)
    words = label_words(task.label_names, task.verbalizer)
    return ClassificationObjective(label_token_ids(words, tokenizer), adapter, hidden_size, task.metric,
                                   task.label_names, words, loss=task.loss, prefix=prefix)
