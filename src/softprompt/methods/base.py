"""The shared LightningModule: loop, verbalizer scoring, metrics, optimizer, checkpoint hygiene.

A method subclass adds only its trainable tensors and how they enter the frozen backbone
(`embed_inputs` for input-level methods).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score
from transformers import get_scheduler
from transformers.modeling_layers import GradientCheckpointingLayer

from softprompt.backbones import Backbone, fingerprint
from softprompt.backbones.families import FAMILY_ADAPTERS
from softprompt.errors import BackboneModifiedError, SoftPromptError
from softprompt.methods.init import InitContext
from softprompt.methods.scoring import Batch, LabelScorer, PooledHeadScorer

BACKBONE_PREFIX = "backbone."


def _classification_metrics(num_labels: int, prefix: str) -> MetricCollection:
    return MetricCollection(
        {"acc": MulticlassAccuracy(num_labels, average="micro"),
         "f1": MulticlassF1Score(num_labels, average="macro")},
        prefix=prefix,
    )


class SoftPromptModule(L.LightningModule):
    """Frozen backbone + a method's trainable part, trained by verbalizer cross-entropy."""

    num_virtual_tokens = 0
    trains = True  # False for methods without trainable tensors: fitting is skipped
    position_offset = 0  # where real tokens' position ids start (the prefix length for prefix methods)

    def __init__(self, *, backbone: Backbone, label_token_ids: Sequence[Sequence[Sequence[int]]],
                 optimizer: Mapping, name: str, dropout: bool = False) -> None:
        super().__init__()
        self.backbone = backbone.model
        self.adapter = FAMILY_ADAPTERS[backbone.family]
        self.adapter.check_label_words(label_token_ids)
        num_labels = len(label_token_ids)
        if self.adapter.needs_head:  # trainable, saved with the method's tensors
            self.classifier = torch.nn.Linear(self.backbone.get_input_embeddings().embedding_dim, num_labels)
            self.scorer = PooledHeadScorer(self.classifier)
        else:
            self.scorer = LabelScorer(label_token_ids)
        self.optimizer_cfg = dict(optimizer)
        self.method_name = name
        self.backbone_dropout = dropout
        self.strict_loading = False  # checkpoints deliberately hold the trainable state only
        self.val_metrics = _classification_metrics(num_labels, "val/")
        self.test_metrics = _classification_metrics(num_labels, "test/")
        self.test_predictions: list[dict[str, Any]] = []
        self.backbone_fingerprint: str | None = None

    # -- configuration: subclasses extend ------------------------------------------------------
    @classmethod
    def validate_config(cls, method: Mapping) -> None:
        """Raise ConfigError for settings this method cannot honour; called before anything loads."""

    @classmethod
    def from_config(cls, method: Mapping, init_context: Callable[[], InitContext], **common) -> SoftPromptModule:
        return cls(**common)

    # -- injection: subclasses override -------------------------------------------------------
    def embed_inputs(self, batch: Batch) -> torch.Tensor:
        """Input embeddings for the backbone; input-level methods place their prompt here."""
        return self.adapter.embed(self.backbone, batch["input_ids"])

    def attention_kwargs(self) -> dict[str, Any]:
        """Extra forward kwargs reaching every attention call; attention-level methods add prefixes."""
        return {}

    # -- folding: the trained tensors with any reparameterisation computed away -------------------
    def folded_state(self) -> dict[str, torch.Tensor]:
        """Subclasses add their tensors to this (the classification head, for encoder families)."""
        if not hasattr(self, "classifier"):
            return {}
        return {f"classifier.{k}": v.detach().clone() for k, v in self.classifier.state_dict().items()}

    def load_folded_state(self, state: Mapping[str, torch.Tensor]) -> None:
        """Load the head (encoder families); subclasses load their own tensor via `_folded_parameter`."""
        has_head = hasattr(self, "classifier")
        unknown = sorted(k for k in state if not (has_head and k.startswith("classifier.")))
        if unknown:
            raise SoftPromptError(f"{self.method_name} does not store {unknown}")
        if has_head:
            self.classifier.load_state_dict({k.removeprefix("classifier."): v for k, v in state.items()})

    def _folded_parameter(self, state: Mapping[str, torch.Tensor], key: str,
                          shape: tuple[int, ...]) -> torch.nn.Parameter:
        """`state[key]` as a fresh fp32 parameter after checking its shape; the rest goes to the base."""
        tensor = state[key]
        if tuple(tensor.shape) != tuple(shape):
            raise SoftPromptError(f"folded {key} has shape {tuple(tensor.shape)}; {self.method_name} expects {shape}")
        SoftPromptModule.load_folded_state(self, {k: v for k, v in state.items() if k != key})
        return torch.nn.Parameter(tensor.detach().clone().float())

    def num_folded_params(self) -> int:
        return sum(t.numel() for t in self.folded_state().values())

    # -- forward and scoring -----------------------------------------------------------------
    def hidden_states(self, batch: Batch) -> torch.Tensor:
        return self.adapter.hidden_states(self.backbone, self.embed_inputs(batch), batch["attention_mask"],
                                          self.position_offset, **self.attention_kwargs())

    def forward(self, batch: Batch) -> torch.Tensor:
        """(batch, num_labels) label scores."""
        return self.scorer.scores(batch, self.hidden_states, self.adapter, self.backbone)

    # -- loop ----------------------------------------------------------------------------------
    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        loss = F.cross_entropy(self(batch), batch["labels"])
        if not torch.isfinite(loss):
            raise SoftPromptError(f"train/loss is {loss.item()} at step {self.global_step} of {self.method_name}; "
                                  "nothing was saved from this step on: lower optimizer.lr or check the inputs")
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch["labels"]))
        return loss

    def _evaluate(self, batch: Batch, metrics: MetricCollection, stage: str) -> torch.Tensor:
        scores = self(batch)
        loss = F.cross_entropy(scores, batch["labels"])
        metrics.update(scores, batch["labels"])
        size = len(batch["labels"])
        self.log(f"{stage}/loss", loss, batch_size=size, sync_dist=True)
        self.log_dict(metrics, batch_size=size, prog_bar=stage == "val")
        return scores

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        self._evaluate(batch, self.val_metrics, "val")

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        scores = self._evaluate(batch, self.test_metrics, "test")
        probs = scores.softmax(-1)
        for row, label, p in zip(batch["row_index"].tolist(), batch["labels"].tolist(), probs.tolist(), strict=True):
            self.test_predictions.append(
                {"row_index": row, "label": label, "prediction": max(range(len(p)), key=p.__getitem__),
                 "probabilities": p})

    def on_test_epoch_start(self) -> None:
        self.test_predictions = []

    # -- frozen backbone -----------------------------------------------------------------------
    def train(self, mode: bool = True) -> SoftPromptModule:
        super().train(mode)
        if not self.backbone_dropout:
            self.backbone.eval()
            if mode:
                # transformers checkpoints a layer only while that layer is in training mode. Mark the
                # checkpointed layers themselves (not their dropout-carrying children) as training, so
                # gradient checkpointing runs with dropout still off.
                for module in self.backbone.modules():
                    if isinstance(module, GradientCheckpointingLayer) and module.gradient_checkpointing:
                        module.training = True
        return self

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def num_trainable_params(self) -> int:
        return sum(p.numel() for p in self.trainable_parameters())

    def record_backbone_fingerprint(self) -> str:
        self.backbone_fingerprint = fingerprint(self.backbone)
        return self.backbone_fingerprint

    def verify_backbone_unchanged(self) -> str:
        """Fail loudly if any frozen weight changed since `record_backbone_fingerprint`."""
        now = fingerprint(self.backbone)
        if self.backbone_fingerprint is not None and now != self.backbone_fingerprint:
            raise BackboneModifiedError(
                f"frozen backbone weights changed during the run (fingerprint {self.backbone_fingerprint} -> {now})")
        return now

    def on_fit_start(self) -> None:
        if self.backbone_fingerprint is None:
            self.record_backbone_fingerprint()
        if any(p.requires_grad for p in self.backbone.parameters()):
            raise BackboneModifiedError("a backbone parameter has requires_grad=True; the backbone must stay frozen")

    def on_fit_end(self) -> None:
        self.verify_backbone_unchanged()

    # -- checkpoints: trainable state only -------------------------------------------------------
    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v for k, v in self.state_dict().items() if not k.startswith(BACKBONE_PREFIX)}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["state_dict"] = self.trainable_state_dict()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        expected, found = set(self.trainable_state_dict()), set(checkpoint["state_dict"])
        if expected != found:
            raise SoftPromptError(f"checkpoint does not match method {self.method_name}: "
                                  f"missing {sorted(expected - found)}, unexpected {sorted(found - expected)}")

    # -- optimisation ------------------------------------------------------------------------------
    def configure_optimizers(self) -> dict[str, Any]:
        settings = dict(self.optimizer_cfg)
        schedule = settings.pop("scheduler")
        optimizer = instantiate(settings, params=self.trainable_parameters())
        scheduler = get_scheduler(str(schedule["name"]), optimizer,
                                  num_warmup_steps=int(schedule["warmup_steps"]),
                                  num_training_steps=int(self.trainer.estimated_stepping_batches))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
