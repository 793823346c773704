"""A task mixture's objective: each task's own objective on its rows of a batch; metrics per task
(`val/<task>/acc`) and their macro mean (`val/macro`, each task's own task.metric), which selection maximises."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch import nn

from softprompt.data.task import MACRO
from softprompt.errors import SoftPromptError
from softprompt.objectives.base import Objective, PromptedModel
from softprompt.objectives.scoring import Batch


def select_rows(batch: Batch, rows: torch.Tensor) -> Batch:
    """The batch's rows `rows` (tensors indexed, lists such as target texts picked)."""
    picked = rows.tolist()
    return {key: value[rows] if torch.is_tensor(value) else [value[i] for i in picked] for key, value in batch.items()}


class MixtureObjective(Objective):
    """The tasks' objectives in task-id order; a batch's rows go to their task's objective (one backbone forward
    per task present in the batch)."""

    METRICS = (MACRO,)

    def __init__(self, members: Mapping[str, Objective]) -> None:
        super().__init__(MACRO)
        self.members = nn.ModuleDict(dict(members))

    @property
    def num_tasks(self) -> int:
        return len(self.members)

    @property
    def label_token_ids(self) -> list:
        """Every task's label words, in task order (init=class_labels starts from them)."""
        return [words for member in self.members.values() for words in getattr(member, "label_token_ids", [])]

    def member(self, task_id: int) -> Objective:
        return list(self.members.values())[task_id]

    def parts(self, batch: Batch) -> Iterator[tuple[str, Objective, Batch]]:
        """(task name, its objective, its rows of `batch`) for each task present in the batch."""
        task_ids = batch["task_ids"]
        for task_id, (name, member) in enumerate(self.members.items()):
            rows = (task_ids == task_id).nonzero().flatten()
            if len(rows):
                yield name, member, select_rows(batch, rows)

    def loss(self, module: PromptedModel, batch: Batch) -> torch.Tensor:
        """The mean over the batch's examples of each one's own task loss."""
        total = sum(member.loss(module, part) * len(part["task_ids"]) for _, member, part in self.parts(batch))
        return total / len(batch["task_ids"])

    def outputs(self, module: PromptedModel, batch: Batch) -> torch.Tensor:
        raise SoftPromptError("a task mixture's tasks have their own outputs (label sets or texts); score one task "
                              "through its own objective: `objective.member(task_id)`")

    def evaluate(self, module: PromptedModel, batch: Batch, stage: str) -> list[dict[str, Any]]:
        return [{**record, "task": name} for name, member, part in self.parts(batch)
                for record in member.evaluate(module, part, stage)]

    def end_epoch(self, module: PromptedModel, stage: str) -> None:
        for member in self.members.values():
            member.end_epoch(module, stage)
        module.log(f"{stage}/{MACRO}", self.epoch_value(stage), prog_bar=stage == "val")

    def epoch_value(self, stage: str) -> torch.Tensor:
        return torch.stack([member.epoch_value(stage).float() for member in self.members.values()]).mean()

    def folded_state(self) -> dict[str, torch.Tensor]:
        """The tasks' own tensors (encoder backbones' classification heads), under `<task>.`."""
        return {f"{name}.{key}": value for name, member in self.members.items()
                for key, value in member.folded_state().items()}

    def load_folded_state(self, state: Mapping[str, torch.Tensor]) -> None:
        for name, member in self.members.items():
            member.load_folded_state({k.removeprefix(f"{name}."): v for k, v in state.items()
                                      if k.startswith(f"{name}.")})
        unknown = sorted(k for k in state if k.split(".", 1)[0] not in self.members)
        if unknown:
            raise SoftPromptError(f"this task mixture stores no tensors {unknown}")
