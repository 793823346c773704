"""Classification: verbalizer scores (or a trained head), cross-entropy or Lester's LM loss, accuracy and F1."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score

from softprompt.backbones.families import FamilyAdapter
from softprompt.errors import ConfigError
from softprompt.objectives.base import STAGES, Objective, PromptedModel
from softprompt.objectives.scoring import Batch, LabelScorer, PooledHeadScorer


def _classification_metrics(num_labels: int, prefix: str) -> MetricCollection:
    return MetricCollection(
        {"acc": MulticlassAccuracy(num_labels, average="micro"),
         "f1": MulticlassF1Score(num_labels, average="macro")},
        prefix=prefix,
    )


class ClassificationObjective(Objective):
    """Verbalizer cross-entropy (or a trainable head on encoder families); accuracy and macro-F1."""

    METRICS = ("acc", "f1")
    LOSSES = ("verbalizer", "lm")

    def __init__(self, label_token_ids: Sequence[Sequence[Sequence[int]]], adapter: type[FamilyAdapter],
                 hidden_size: int, metric: str = "acc", label_names: Sequence[str] | None = None,
                 words: Sequence[Sequence[str]] | None = None, loss: str = "verbalizer", prefix: str = "") -> None:
        super().__init__(metric, prefix)
        adapter.check_label_words(label_token_ids, label_names, words)  # names and words make the error readable
        if loss == "lm" and adapter.needs_head:
            raise ConfigError("task.loss", loss, f"a {adapter.family} backbone has no LM head to put a vocabulary "
                              "loss on (it scores labels with a trained head); use task.loss=verbalizer")
        self.loss_kind = loss
        self.label_token_ids = label_token_ids
        num_labels = len(label_token_ids)
        if adapter.needs_head:  # trainable, saved with the method's tensors
            self.classifier = nn.Linear(hidden_size, num_labels)
            self.scorer = PooledHeadScorer(self.classifier)
        else:
            self.scorer = LabelScorer(label_token_ids)
        self.metrics = nn.ModuleDict({stage: _classification_metrics(num_labels, f"{stage}/{prefix}")
                                      for stage in STAGES})

    def outputs(self, module: PromptedModel, batch: Batch) -> torch.Tensor:
        return self.scorer.scores(batch, module.hidden_states, module.adapter, module.backbone)

    def scores_and_loss(self, module: PromptedModel, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """Label scores and the task.loss on them, from one backbone forward."""
        if self.loss_kind == "verbalizer":
            scores = self.outputs(module, batch)
            return scores, F.cross_entropy(scores, batch["labels"])
        hidden = module.hidden_states(self.scorer.model_inputs(batch))
        scores = self.scorer.scores_from_hidden(batch, hidden, module.adapter, module.backbone)
        return scores, self.scorer.lm_loss_from_hidden(batch, hidden, module.adapter, module.backbone)

    def loss(self, module: PromptedModel, batch: Batch) -> torch.Tensor:
        return self.scores_and_loss(module, batch)[1]

    def evaluate(self, module: PromptedModel, batch: Batch, stage: str) -> list[dict[str, Any]]:
        scores, loss = self.scores_and_loss(module, batch)
        metrics = self.metrics[stage]
        metrics.update(scores, batch["labels"])
        size = len(batch["labels"])
        self.log_loss(module, stage, loss, size)
        module.log_dict(metrics, batch_size=size, prog_bar=stage == "val")
        probs = scores.softmax(-1)
        return [{"row_index": row, "label": label, "prediction": max(range(len(p)), key=p.__getitem__),
                 "probabilities": p}
                for row, label, p in zip(batch["row_index"].tolist(), batch["labels"].tolist(), probs.tolist(),
                                         strict=True)]

    def epoch_value(self, stage: str) -> torch.Tensor:
        return self.metrics[stage][self.metric].compute()  # cached: Lightning's own compute reads it again

    def folded_state(self) -> dict[str, torch.Tensor]:
        if not hasattr(self, "classifier"):
            return {}
        return {f"classifier.{k}": v.detach().clone() for k, v in self.classifier.state_dict().items()}

    def load_folded_state(self, state: Mapping[str, torch.Tensor]) -> None:
        if not hasattr(self, "classifier"):
            return super().load_folded_state(state)
        self.classifier.load_state_dict({k.removeprefix("classifier."): v for k, v in state.items()})


