"""An objective is the task side of a method module: loss, metrics and predictions.

It never touches the method's tensors: it calls the module's `hidden_states`, `target_hidden` and
`generate`, which carry the prompt in.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol

import torch
from torch import nn
from torchmetrics import MeanMetric

from softprompt.errors import SoftPromptError
from softprompt.objectives.scoring import Batch

if TYPE_CHECKING:
    from softprompt.backbones.families import FamilyAdapter
    from softprompt.objectives.decoding import DecodingConfig


class PromptedModel(Protocol):
    """What an objective needs of a method module: forward passes with the prompt in (a method's), and logging
    (the LightningModule that trains it); objectives never see the method's tensors."""

    backbone: torch.nn.Module
    adapter: type[FamilyAdapter]

    def hidden_states(self, batch: Batch) -> torch.Tensor: ...

    def target_hidden(self, batch: Batch) -> torch.Tensor: ...

    def generate(self, batch: Batch, config: DecodingConfig, eos_token_id: int) -> list[list[int]]: ...

    def score_and_generate(self, batch: Batch, config: DecodingConfig, eos_token_id: int
                           ) -> tuple[torch.Tensor, list[list[int]]]: ...

    def log(self, name: str, value: Any, **kwargs: Any) -> None: ...

    def log_dict(self, values: Mapping[str, Any], **kwargs: Any) -> None: ...

STAGES = ("val", "test")


class Objective(nn.Module):
    """Loss, evaluation and predictions for one task type; `metric` (one of METRICS, from `task.metric`) is
    what model selection maximises."""

    METRICS: tuple[str, ...] = ()
    LOSSES: tuple[str, ...] = ()  # task.loss values this objective trains with

    def __init__(self, metric: str, prefix: str = "") -> None:
        super().__init__()
        self.metric = metric
        self.prefix = prefix  # before each logged name after the stage: a mixture's `val/<task>/acc`
        # Example-weighted mean loss per stage; torchmetrics sums its states across processes exactly.
        self.losses = nn.ModuleDict({stage: MeanMetric() for stage in STAGES})

    @property
    def num_tasks(self) -> int:
        """The tasks this objective trains on: 1, or a mixture's tasks (its batches carry `task_ids`, (batch,)
        indices into the mixture's task order)."""
        return 1

    def log_loss(self, module: PromptedModel, stage: str, loss: torch.Tensor, size: int) -> None:
        self.losses[stage].update(loss.detach(), weight=size)
        module.log(f"{stage}/{self.prefix}loss", self.losses[stage], batch_size=size)

    def loss(self, module: PromptedModel, batch: Batch) -> torch.Tensor:
        raise NotImplementedError

    def outputs(self, module: PromptedModel, batch: Batch) -> torch.Tensor:
        """The module's forward: label scores, or target-token logits."""
        raise NotImplementedError

    def evaluate(self, module: PromptedModel, batch: Batch, stage: str) -> list[dict[str, Any]]:
        """Update and log the stage's metrics; return one prediction record per example."""
        raise NotImplementedError

    def end_epoch(self, module: PromptedModel, stage: str) -> None:
        """Log metrics that are computed once per epoch."""

    def epoch_value(self, stage: str) -> torch.Tensor:
        """The selection metric over the stage's epoch so far (after `end_epoch`): what a mixture averages."""
        raise NotImplementedError

    def folded_state(self) -> dict[str, torch.Tensor]:
        """Trainable tensors that belong to the task side (a classification head)."""
        return {}

    def load_folded_state(self, state: Mapping[str, torch.Tensor]) -> None:
        if state:
            raise SoftPromptError(f"this objective stores no tensors, got {sorted(state)}")


