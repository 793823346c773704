"""A method module keeps its backbone frozen: eval mode unless backbone dropout is on, only its own tensors
trainable, and a changed backbone fails loudly."""

from __future__ import annotations

import pytest
import torch

from softprompt.backbones import fingerprint
from softprompt.errors import BackboneModifiedError


def test_backbone_stays_in_eval_mode_unless_dropout_is_enabled(tiny_backbone, prompt_module):
    backbone = tiny_backbone()
    module = prompt_module(backbone, [["n"], ["p"]])
    module.train()
    assert module.training and not any(m.training for m in module.backbone.modules())
    assert not any(p.requires_grad for p in module.backbone.parameters())
    assert [n for n, p in module.named_parameters() if p.requires_grad] == ["prompt"]
    with_dropout = prompt_module(tiny_backbone(fresh=True), [["n"], ["p"]], dropout=True)  # puts it in training
    with_dropout.train()
    assert all(m.training for m in with_dropout.backbone.modules())


def test_changed_backbone_fails_loudly(tiny_backbone, prompt_module, lightning_module):
    backbone = tiny_backbone(fresh=True)  # its weights get changed
    module = lightning_module(prompt_module(backbone, [["n"], ["p"]]))
    before = module.record_backbone_fingerprint()
    assert module.verify_backbone_unchanged() == before == fingerprint(backbone.model)
    with torch.no_grad():
        backbone.model.get_input_embeddings().weight[5, 0] += 1e-3
    with pytest.raises(BackboneModifiedError, match="frozen backbone weights changed"):
        module.verify_backbone_unchanged()
