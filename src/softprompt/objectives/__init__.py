"""The task side of a run: what it optimises and measures (label scores or target text).

`build_objective(task, ...)` returns the task type's Objective; the method module calls it for its loss,
evaluation and predictions.
"""

from __future__ import annotations

from transformers import PreTrainedTokenizerBase

from softprompt.backbones.families import FamilyAdapter
from softprompt.data.task import GenerationTask, TaskConfig
from softprompt.data.verbalizer import label_token_ids, label_words
from softprompt.errors import ConfigError
from softprompt.objectives.base import STAGES, Objective
from softprompt.objectives.classification import ClassificationObjective
from softprompt.objectives.decoding import DecodingConfig
from softprompt.objectives.generation import GenerationObjective, TextMetrics

__all__ = ["STAGES", "ClassificationObjective", "GenerationObjective", "Objective", "TextMetrics",
           "build_objective", "check_objective_config"]

OBJECTIVES: dict[str, type[Objective]] = {"classification": ClassificationObjective,
                                          "generation": GenerationObjective}


def check_objective_config(task: TaskConfig) -> None:
    """`task.metric`, `task.loss` and a generation task's decoding settings, checked before anything loads."""
    objective = OBJECTIVES[task.type]
    if task.metric not in objective.METRICS:
        raise ConfigError("task.metric", task.metric, f"a {task.type} task selects by one of: "
                          f"{', '.join(objective.METRICS)}")
    if task.loss not in objective.LOSSES:
        raise ConfigError("task.loss", task.loss, f"a {task.type} task trains with one of: "
                          f"{', '.join(objective.LOSSES)}")
    if isinstance(task, GenerationTask):
        DecodingConfig.from_config(task.generation)


def build_objective(task: TaskConfig, adapter: type[FamilyAdapter], tokenizer: PreTrainedTokenizerBase,
                    hidden_size: int) -> Objective:
    """The task's objective; a classification task's verbalizer is tokenised and checked here."""
    check_objective_config(task)
    if isinstance(task, GenerationTask):
        return GenerationObjective(tokenizer, DecodingConfig.from_config(task.generation), adapter, task.metric)
    words = label_words(task.label_names, task.verbalizer)
    return ClassificationObjective(label_token_ids(words, tokenizer), adapter, hidden_size, task.metric,
                                   task.label_names, words, loss=task.loss)
