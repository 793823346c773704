"""Encoders with a head: a trainable linear head on the pooled output, for every soft method."""

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


@pytest.mark.parametrize("method", METHODS)
def test_pooled_scores_are_padding_invariant_and_fold_losslessly(backbone, method, make_batch, method_module,
                                                                 template_for):
    module = method_module(method, backbone, WORDS, n=3, init="random_normal")
    module.eval()
    template = template_for(method, 3)
    with torch.no_grad():
        alone = torch.cat([module(make_batch(backbone, [t], template)) for t in TEXTS])
        batched = module(make_batch(backbone, TEXTS, template, padding_side="left"))
        assert torch.allclose(alone, batched, atol=1e-5)
        fresh = method_module(method, backbone, WORDS, n=3, seed=5,
                              **({"encoder": "none"} if method == "p_tuning_mlp" else {"reparam": "none"}
                                 if method == "prefix_tuning" else {}))
        fresh.load_folded_state(module.folded_state())
        fresh.eval()
        assert torch.allclose(fresh(make_batch(backbone, TEXTS, template)), alone, atol=1e-5)


def test_hard_prompt_is_refused_on_an_encoder_with_a_head(backbone, hard_prompt_module):
    with pytest.raises(ConfigError, match="no zero-shot baseline"):
        hard_prompt_module(backbone, WORDS)
