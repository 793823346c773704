"""Training on a quantised backbone refuses, in one line, a step whose gradient cannot be right.

A quantised layer served by a kernel without a backward drops the gradient through it silently (bitsandbytes'
packed 4-bit CPU format: softprompt.backbones.quantization). Loading switches that format off; this guard checks,
before every training step, that no layer is in it anyway, and after the first backward, that the trainable
tensors got a gradient at all.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from torch import nn

from softprompt.backbones.quantization import undifferentiable_layers
from softprompt.config.quantization import KEY
from softprompt.errors import ConfigError


class QuantizedGradientGuard(L.Callback):
    """Refuses a training step on a quantised `backbone` (the frozen model) that gradients cannot pass."""

    def __init__(self, backbone: nn.Module, scheme: str) -> None:
        self.backbone, self.scheme = backbone, scheme
        self.checked_gradient = False

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        packed = undifferentiable_layers(self.backbone)
        if packed:
            raise ConfigError(KEY, self.scheme, f"{len(packed)} 4-bit layers ({packed[0]}, ...) were repacked into "
                              "bitsandbytes' CPU inference format, which has no backward, so the prompt's gradient "
                              "would be wrong; use backbone.quantization=int8 or none on this CPU")

    def on_after_backward(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.checked_gradient:
            return
        self.checked_gradient = True
        grads = [p.grad for p in pl_module.parameters() if p.requires_grad and p.grad is not None]
        if not any(bool(torch.any(g != 0)) for g in grads):
            raise ConfigError(KEY, self.scheme, "the trainable tensors got no gradient on the first training step "
                              "(no gradient passed the quantised backbone); use backbone.quantization=none")
