"""The LightningModule, written once: it trains any method (`softprompt.methods.base.SoftPromptMethod`) with its
objective's loss. The loop, the optimizer, gradient clipping (FSDP), backbone fingerprints and the checkpoint
hooks (trainable state only) live here, not in the methods.

The method is the module's one child, `method`; attributes the module does not have read through to it (its
declarations and forward passes), so the objective and the run see one module, as they did when the method was
the LightningModule itself.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager, nullcontext
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from torch.distributed.fsdp import FullStateDictConfig, StateDictType
from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
from transformers import get_scheduler

from softprompt.backbones import fingerprint
from softprompt.backbones.loading import fingerprint_state, tied_aliases
from softprompt.errors import BackboneModifiedError, SoftPromptError
from softprompt.methods.base import SoftPromptMethod
from softprompt.objectives.scoring import Batch

METHOD_PREFIX = "method."
BACKBONE_PREFIX = f"{METHOD_PREFIX}backbone."
TRAINABLE_KEYS = "softprompt_trainable_keys"  # saved beside the state dict, which FSDP pops on load


def migrate_checkpoint_keys(checkpoint: dict[str, Any]) -> bool:
    """Move a checkpoint written when the method was the LightningModule (keys `prompt`, `objective.head...`) to
    this layout (`method.prompt`, ...), in place; True if it was the old layout."""
    keys = list(checkpoint.get("state_dict", checkpoint.get(TRAINABLE_KEYS, ())))
    if not keys or any(key.startswith(METHOD_PREFIX) for key in keys):
        return False
    if "state_dict" in checkpoint:
        checkpoint["state_dict"] = {METHOD_PREFIX + k: v for k, v in checkpoint["state_dict"].items()}
    if TRAINABLE_KEYS in checkpoint:
        checkpoint[TRAINABLE_KEYS] = sorted(METHOD_PREFIX + k for k in checkpoint[TRAINABLE_KEYS])
    return True


class TrainingModule(L.LightningModule):
    """A method trained by its objective's loss: the frozen backbone stays frozen, checkpoints hold only what
    trains."""

    def __init__(self, method: SoftPromptMethod, optimizer: Mapping) -> None:
        super().__init__()
        self.method = method
        self.optimizer_cfg = dict(optimizer)
        self.strict_loading = False  # checkpoints deliberately hold the trainable state only
        self.test_predictions: list[dict[str, Any]] = []
        self.val_predictions: list[dict[str, Any]] = []  # this process's share of the latest validation pass
        self.backbone_fingerprint: str | None = None

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name.startswith("_") or name == "method":
                raise
            return getattr(self._modules["method"], name)  # the method's declarations and forward passes

    def forward(self, batch: Batch) -> torch.Tensor:
        return self.method(batch)

    # -- loop ----------------------------------------------------------------------------------
    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        loss = self.method.objective.loss(self, batch)
        if not torch.isfinite(loss):
            hint = "lower optimizer.lr or check the inputs"
            if self.method.backbone.dtype == torch.float16:
                hint += " (a float16 backbone overflows past 65504; bfloat16 has float32's range)"
            raise SoftPromptError(f"train/loss is {loss.item()} at step {self.global_step} of "
                                  f"{self.method.method_name}; nothing was saved from this step on: {hint}")
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch["input_ids"]))
        return loss

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        self.val_predictions.extend(self.method.objective.evaluate(self, batch, "val"))

    def on_validation_epoch_start(self) -> None:
        self.val_predictions = []

    def on_validation_epoch_end(self) -> None:
        self.method.objective.end_epoch(self, "val")

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        self.test_predictions.extend(self.method.objective.evaluate(self, batch, "test"))

    def on_test_epoch_start(self) -> None:
        self.test_predictions = []

    def on_test_epoch_end(self) -> None:
        self.method.objective.end_epoch(self, "test")

    # -- frozen backbone -----------------------------------------------------------------------
    def sharded_root(self) -> FSDP | None:
        """The root FSDP unit this module runs in, if any (its ranks each hold a shard of its tensors)."""
        root = self._trainer.strategy.model if self._trainer is not None else None
        return root if isinstance(root, FSDP) else None

    def current_backbone_fingerprint(self) -> str:
        root = self.sharded_root()
        if root is None:
            return fingerprint(self.method.backbone)
        # Gathered on every rank (a collective), under the names the unwrapped backbone has.
        config = FullStateDictConfig(offload_to_cpu=root.compute_device.type != "cpu", rank0_only=False)
        with FSDP.state_dict_type(root, StateDictType.FULL_STATE_DICT, config):
            state = root.state_dict()
        return fingerprint_state({k.removeprefix(BACKBONE_PREFIX): v for k, v in state.items()
                                  if k.startswith(BACKBONE_PREFIX)}, skip=tied_aliases(self.method.backbone))

    @contextmanager
    def full_trainable_tensors(self) -> Iterator[None]:
        """Under FSDP, gather the root unit's own tensors (the prompt, encoders, heads) for folding;
        every rank must enter. Elsewhere a no-op."""
        root = self.sharded_root()
        with FSDP.summon_full_params(root, recurse=False, writeback=False) if root else nullcontext():
            yield

    def record_backbone_fingerprint(self) -> str:
        self.backbone_fingerprint = self.current_backbone_fingerprint()
        return self.backbone_fingerprint

    def verify_backbone_unchanged(self) -> str:
        """Fail loudly if any frozen weight changed since `record_backbone_fingerprint`."""
        now = self.current_backbone_fingerprint()
        if self.backbone_fingerprint is not None and now != self.backbone_fingerprint:
            raise BackboneModifiedError(
                f"frozen backbone weights changed during the run (fingerprint {self.backbone_fingerprint} -> {now})")
        return now

    def on_fit_start(self) -> None:
        if self.backbone_fingerprint is None:
            self.record_backbone_fingerprint()
        if any(p.requires_grad for p in self.method.backbone.parameters()):
            raise BackboneModifiedError("a backbone parameter has requires_grad=True; the backbone must stay frozen")

    def on_fit_end(self) -> None:
        self.verify_backbone_unchanged()

    # -- checkpoints: trainable state only -------------------------------------------------------
    def trainable_state_names(self) -> set[str]:
        """State-dict keys outside the frozen backbone, found without calling the backbone's state_dict
        (under FSDP that would gather every shard)."""
        method = self.method
        names = {f"{METHOD_PREFIX}{name}" for name, _ in (*method.named_parameters(recurse=False),
                                                            *method.named_buffers(recurse=False))}
        for child_name, child in method.named_children():
            if child is not method.backbone:
                names |= {f"{METHOD_PREFIX}{child_name}.{key}" for key in child.state_dict(keep_vars=True)}
        return names

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # The strategy's state dict (gathered under FSDP), less the frozen backbone.
        state = {k: v for k, v in checkpoint["state_dict"].items() if not k.startswith(BACKBONE_PREFIX)}
        checkpoint["state_dict"] = state
        checkpoint[TRAINABLE_KEYS] = sorted(state)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # FSDP's strategy loads the state dict and pops it before this hook; the key list saved beside it stays.
        if migrate_checkpoint_keys(checkpoint) and "state_dict" not in checkpoint:
            raise SoftPromptError("the checkpoint predates the method/training split and FSDP loaded it before its "
                                  "keys could move under `method.`: resume it once without FSDP")
        found = set(checkpoint["state_dict"] if "state_dict" in checkpoint else checkpoint.get(TRAINABLE_KEYS, ()))
        expected = self.trainable_state_names()
        if expected != found:
            raise SoftPromptError(f"checkpoint does not match method {self.method.method_name}: "
                                  f"missing {sorted(expected - found)}, unexpected {sorted(found - expected)}")

    # -- optimisation ------------------------------------------------------------------------------
    def configure_optimizers(self) -> dict[str, Any]:
        settings = dict(self.optimizer_cfg)
        schedule = settings.pop("scheduler")
        # Partial: Hydra would turn the groups (dicts of tensors) into DictConfigs, which torch refuses.
        optimizer = instantiate(settings, _partial_=True)(params=self.method.parameter_groups())
        scheduler = get_scheduler(str(schedule["name"]), optimizer,
                                  num_warmup_steps=int(schedule["warmup_steps"]),
                                  num_training_steps=int(self.trainer.estimated_stepping_batches))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def configure_gradient_clipping(self, optimizer: torch.optim.Optimizer, gradient_clip_val: float | None = None,
                                    gradient_clip_algorithm: str | None = None) -> None:
        # Lightning's FSDP precision refuses norm clipping; FSDP's own clip_grad_norm_ takes the norm
        # over every shard, so trainer.gradient_clip_val means the same under FSDP as elsewhere.
        sharded = self.trainer.strategy.model
        if gradient_clip_val and gradient_clip_algorithm in (None, "norm") and isinstance(sharded, FSDP):
            sharded.clip_grad_norm_(gradient_clip_val)
            return
        super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)


def training_module(method: SoftPromptMethod, optimizer: Mapping) -> TrainingModule:
    """The LightningModule that trains `method` with the `optimizer` group's settings."""
    return TrainingModule(method, optimizer)
