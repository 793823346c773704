"""Encoders with a head: a trainable linear head on the pooled output, for every soft method. (Padding invariance and
folding with the head, for every method, are in test_method_contract.py.)"""

from __future__ import annotations

import pytest
import torch

from softprompt.errors import ConfigError

METHODS = ["prompt_tuning", "p_tuning_mlp", "prefix_tuning", "p_tuning_v2"]
TEXTS = ["ok", "a much longer review that goes on", "middling"]
WORDS = [[" bad"], [" good"]]  # unused by the head, but every task names its labels' words


@pytest.fixture(scope="module")
def backbone(tiny_backbone):
    backbone = tiny_backbone("bert_head")
    assert backbone.family == "encoder_head" and not hasattr(backbone.model, "cls")
    return backbone


@pytest.mark.parametrize("method", METHODS)
def test_head_is_trainable_counted_and_folded(backbone, method, method_module):
    module = method_module(method, backbone, WORDS, n=3)
    head = 32 * 2 + 2
    trainable = {n for n, p in module.named_parameters() if p.requires_grad}
    assert trainable >= {"objective.classifier.weight", "objective.classifier.bias"}
    folded = module.folded_state()
    assert folded["classifier.weight"].shape == (2, 32) and folded["classifier.bias"].shape == (2,)
    assert torch.equal(folded["classifier.weight"], module.objective.classifier.weight)
    own = {"prompt_tuning": 3 * 32, "p_tuning_mlp": 3 * 32, "prefix_tuning": 3 * 128, "p_tuning_v2": 3 * 128}
    assert module.num_folded_params() == own[method] + head  # the head is stored with the prompt
    if method == "prompt_tuning":
        assert module.num_trainable_params() == 3 * 32 + head


def test_hard_prompt_is_refused_on_an_encoder_with_a_head(backbone, hard_prompt_module):
    with pytest.raises(ConfigError, match="no zero-shot baseline"):
        hard_prompt_module(backbone, WORDS)
