"""Gradient checkpointing that does not need training mode.

transformers checkpoints a `GradientCheckpointingLayer` only while the layer is in training mode. Our
frozen backbone stays in eval mode when `backbone.dropout=false`, and training mode cannot be given to the
layer alone: BART-family layers (BART, mBART, Pegasus, Marian, ...) call
`dropout(..., training=self.training)` in their own bodies. So checkpointed layers get a forward that
recomputes them in backward whenever gradients are enabled, in either mode; dropout simply follows the mode.

Design: each checkpointed layer's class is swapped for a subclass (one per layer class, cached) that puts
`AnyModeCheckpointing.forward` first. A class-level forward holds no reference to the instance, so
`copy.deepcopy` gives a copy that recomputes with its own weights (a per-instance closure would be copied
by reference and keep running the original layer). Module hooks cannot replace a forward call without
torch's private checkpoint generator. The subclass keeps the layer's name and `isinstance` relations
(FSDP's per-layer wrapping, transformers' output capturing), and `forward` is checkpointed rather than
`__call__`, so module hooks (FSDP's) stay outside the recompute, as in transformers. Like transformers' own
checkpointing (its input-grad hook is a local function), it leaves the model deep-copyable, not picklable.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint
from transformers.modeling_layers import GradientCheckpointingLayer

# Cache arguments transformers drops under checkpointing (the recompute would write a cache twice).
CACHE_KWARGS = ("cache", "layer_past", "past_key_values", "past_key_value")


class AnyModeCheckpointing:
    """Mixin placed before a transformers layer class: checkpoint whenever grad is enabled."""

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        layer_forward = super().forward  # the layer's own forward, via transformers' (now inner) wrapper
        if not (self.gradient_checkpointing and torch.is_grad_enabled()):
            return layer_forward(*args, **kwargs)
        if kwargs.get("use_cache"):
            kwargs["use_cache"] = False
        if not getattr(self, "_can_checkpoint_with_cache", False):
            kwargs.update({name: None for name in CACHE_KWARGS if kwargs.get(name) is not None})
        # Non-reentrant: no input needs requires_grad (a frozen backbone), and keyword arguments (masks,
        # position embeddings, the attention prefix) are part of the recomputed call. RNG state is
        # replayed, so training-mode dropout masks match the forward's.
        return checkpoint(layer_forward, *args, use_reentrant=False, **kwargs)


_CHECKPOINTED: dict[type, type] = {}


def any_mode_class(layer_class: type) -> type:
    """The cached subclass of `layer_class` whose forward is `AnyModeCheckpointing.forward`."""
    if issubclass(layer_class, AnyModeCheckpointing):
        return layer_class
    if layer_class not in _CHECKPOINTED:
        subclass = type(layer_class.__name__, (AnyModeCheckpointing, layer_class), {"__module__": __name__})
        # GradientCheckpointingLayer.__init_subclass__ wrapped our forward in transformers' mode-dependent
        # checkpointing; remove it so only ours runs (the parent's wrapper then sees it is not outermost).
        if "forward" in subclass.__dict__:
            del subclass.forward
        _CHECKPOINTED[layer_class] = subclass
    return _CHECKPOINTED[layer_class]


def checkpoint_in_any_mode(model: nn.Module) -> int:
    """Give each layer of `model` that transformers flagged for checkpointing the any-mode forward
    (idempotent; unflagged layers keep their class). Returns how many layers are checkpointed."""
    count = 0
    for module in model.modules():
        if isinstance(module, GradientCheckpointingLayer) and module.gradient_checkpointing:
            module.__class__ = any_mode_class(type(module))
            count += 1
    return count
