"""What a run optimises and measures: label scores (classification) or target text (generation).

An objective is the task side of a SoftPromptModule. It never touches the method's tensors: it calls
the module's `hidden_states`, `target_hidden` and `generate`, which carry the prompt in.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import MeanMetric, MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score
from torchmetrics.text import SacreBLEUScore
from torchmetrics.text.rouge import ROUGEScore
from transformers import PreTrainedTokenizerBase

from softprompt.backbones.families import FamilyAdapter
from softprompt.data.verbalizer import label_token_ids, label_words
from softprompt.errors import ConfigError, SoftPromptError
from softprompt.methods.decoding import DecodingConfig
from softprompt.methods.scoring import Batch, LabelScorer, PooledHeadScorer

if TYPE_CHECKING:
    from softprompt.methods.base import SoftPromptModule

STAGES = ("val", "test")


class Objective(nn.Module):
    """Loss, evaluation and predictions for one task type; `metric` (one of METRICS, from `task.metric`) is
    what model selection maximises."""

    METRICS: tuple[str, ...] = ()
    LOSSES: tuple[str, ...] = ()  # task.loss values this objective trains with

    def __init__(self, metric: str) -> None:
        super().__init__()
        self.metric = metric
        # Example-weighted mean loss per stage; torchmetrics sums its states across processes exactly.
        self.losses = nn.ModuleDict({stage: MeanMetric() for stage in STAGES})

    def log_loss(self, module: SoftPromptModule, stage: str, loss: torch.Tensor, size: int) -> None:
        self.losses[stage].update(loss.detach(), weight=size)
        module.log(f"{stage}/loss", self.losses[stage], batch_size=size)

    def loss(self, module: SoftPromptModule, batch: Batch) -> torch.Tensor:
        raise NotImplementedError

    def outputs(self, module: SoftPromptModule, batch: Batch) -> torch.Tensor:
        """The module's forward: label scores, or target-token logits."""
        raise NotImplementedError

    def evaluate(self, module: SoftPromptModule, batch: Batch, stage: str) -> list[dict[str, Any]]:
        """Update and log the stage's metrics; return one prediction record per example."""
        raise NotImplementedError

    def end_epoch(self, module: SoftPromptModule, stage: str) -> None:
        """Log metrics that are computed once per epoch."""

    def folded_state(self) -> dict[str, torch.Tensor]:
        """Trainable tensors that belong to the task side (a classification head)."""
        return {}

    def load_folded_state(self, state: Mapping[str, torch.Tensor]) -> None:
        if state:
            raise SoftPromptError(f"this objective stores no tensors, got {sorted(state)}")


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
                 words: Sequence[Sequence[str]] | None = None, loss: str = "verbalizer") -> None:
        super().__init__(metric)
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
        self.metrics = nn.ModuleDict({stage: _classification_metrics(num_labels, f"{stage}/") for stage in STAGES})

    def outputs(self, module: SoftPromptModule, batch: Batch) -> torch.Tensor:
        return self.scorer.scores(batch, module.hidden_states, module.adapter, module.backbone)

    def scores_and_loss(self, module: SoftPromptModule, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """Label scores and the task.loss on them, from one backbone forward."""
        if self.loss_kind == "verbalizer":
            scores = self.outputs(module, batch)
            return scores, F.cross_entropy(scores, batch["labels"])
        hidden = module.hidden_states(self.scorer.model_inputs(batch))
        scores = self.scorer.scores_from_hidden(batch, hidden, module.adapter, module.backbone)
        return scores, self.scorer.lm_loss_from_hidden(batch, hidden, module.adapter, module.backbone)

    def loss(self, module: SoftPromptModule, batch: Batch) -> torch.Tensor:
        return self.scores_and_loss(module, batch)[1]

    def evaluate(self, module: SoftPromptModule, batch: Batch, stage: str) -> list[dict[str, Any]]:
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

    def folded_state(self) -> dict[str, torch.Tensor]:
        if not hasattr(self, "classifier"):
            return {}
        return {f"classifier.{k}": v.detach().clone() for k, v in self.classifier.state_dict().items()}

    def load_folded_state(self, state: Mapping[str, torch.Tensor]) -> None:
        if not hasattr(self, "classifier"):
            return super().load_folded_state(state)
        self.classifier.load_state_dict({k.removeprefix("classifier."): v for k, v in state.items()})


class TextMetrics(nn.Module):
    """ROUGE-1/2/L F-measure (no stemming) and corpus SacreBLEU, all from torchmetrics, in [0, 1]."""

    def __init__(self) -> None:
        super().__init__()
        self.rouge = ROUGEScore(rouge_keys=("rouge1", "rouge2", "rougeL"))
        self.bleu = SacreBLEUScore()

    def update(self, predictions: list[str], references: list[str]) -> None:
        self.rouge.update(predictions, references)
        self.bleu.update(predictions, [[r] for r in references])

    def compute_and_reset(self) -> dict[str, torch.Tensor]:
        rouge = self.rouge.compute()
        values = {key: rouge[f"{key}_fmeasure"] for key in ("rouge1", "rouge2", "rougeL")}
        values["bleu"] = self.bleu.compute()
        self.rouge.reset()
        self.bleu.reset()
        return values


class GenerationObjective(Objective):
    """Teacher-forced LM loss on the target tokens only; evaluation decodes with the prompt in place."""

    METRICS = ("rougeL", "rouge1", "rouge2", "bleu")
    LOSSES = ("lm",)

    def __init__(self, tokenizer: PreTrainedTokenizerBase, decoding: DecodingConfig,
                 adapter: type[FamilyAdapter], metric: str = "rougeL") -> None:
        super().__init__(metric)
        if not adapter.generates:
            raise ConfigError("task.type", "generation", f"a {adapter.family} backbone has no decoder to generate "
                              "with; use a causal_lm or seq2seq backbone")
        if tokenizer.eos_token_id is None:
            raise ConfigError("backbone.name_or_path", tokenizer.name_or_path, "generation needs an eos token")
        self.tokenizer = tokenizer
        self.decoding = decoding
        self.eos_token_id = int(tokenizer.eos_token_id)
        self.metrics = nn.ModuleDict({stage: TextMetrics() for stage in STAGES})

    def outputs(self, module: SoftPromptModule, batch: Batch) -> torch.Tensor:
        return module.adapter.vocab_logits(module.backbone, module.target_hidden(batch)).float()

    def loss(self, module: SoftPromptModule, batch: Batch) -> torch.Tensor:
        mask = batch["target_mask"].bool()
        return F.cross_entropy(self.outputs(module, batch)[mask], batch["target_ids"][mask])

    def evaluate(self, module: SoftPromptModule, batch: Batch, stage: str) -> list[dict[str, Any]]:
        size = len(batch["target_ids"])
        self.log_loss(module, stage, self.loss(module, batch), size)
        texts = self.generate_texts(module, batch)
        references = list(batch["target_text"])
        self.metrics[stage].update(texts, references)
        return [{"row_index": row, "prediction": text, "reference": reference}
                for row, text, reference in zip(batch["row_index"].tolist(), texts, references, strict=True)]

    def generate_texts(self, module: SoftPromptModule, batch: Batch) -> list[str]:
        """The predictions as scored: decoded with the prompt in place, then cut by `DecodingConfig.finish`."""
        return self.texts(module.generate(batch, self.decoding, self.eos_token_id))

    def texts(self, tokens: Sequence[Sequence[int]]) -> list[str]:
        """Generated token ids as the predictions are scored: decoded, then cut by `DecodingConfig.finish`."""
        return [self.decoding.finish(text) for text in self.tokenizer.batch_decode(tokens, skip_special_tokens=True)]

    def end_epoch(self, module: SoftPromptModule, stage: str) -> None:
        values = self.metrics[stage].compute_and_reset()
        module.log_dict({f"{stage}/{k}": v for k, v in values.items()}, prog_bar=stage == "val")


OBJECTIVES: dict[str, type[Objective]] = {"classification": ClassificationObjective,
                                          "generation": GenerationObjective}


def check_objective_config(task: Mapping) -> None:
    """`task.type` and `task.metric`, checked before anything loads."""
    task_type = task.get("type")
    if task_type not in OBJECTIVES:
        raise ConfigError("task.type", task_type, f"allowed: {', '.join(OBJECTIVES)}")
    allowed = OBJECTIVES[task_type].METRICS
    if task.get("metric") not in allowed:
        raise ConfigError("task.metric", task.get("metric"), f"a {task_type} task selects by one of: "
                          f"{', '.join(allowed)}")
    losses = OBJECTIVES[task_type].LOSSES
    if task.get("loss") not in losses:
        raise ConfigError("task.loss", task.get("loss"), f"a {task_type} task trains with one of: {', '.join(losses)}")
    if task_type == "generation":
        DecodingConfig.from_config(task.get("generation") or {})


def build_objective(task: Mapping, adapter: type[FamilyAdapter], tokenizer: PreTrainedTokenizerBase,
                    hidden_size: int) -> Objective:
    """The task's objective; a classification task's verbalizer is tokenised and checked here."""
    check_objective_config(task)
    if task["type"] == "generation":
        return GenerationObjective(tokenizer, DecodingConfig.from_config(task["generation"]), adapter,
                                   task["metric"])
    names = [str(x) for x in task["labels"]]
    words = label_words(names, task["verbalizer"])
    return ClassificationObjective(label_token_ids(words, tokenizer), adapter, hidden_size, task["metric"],
                                   names, words, loss=task["loss"])
