"""The masked-LM family: the answer is the template's mask token, scored through the MLM head."""

from __future__ import annotations

import pytest
import torch

from softprompt.errors import ConfigError

TEXTS = ["ok", "a much longer review that goes on", "middling"]
WORDS = [["n"], ["p"]]


def label_ids(backbone):
    return [backbone.tokenizer(w[0], add_special_tokens=False).input_ids[0] for w in WORDS]


@pytest.mark.parametrize("architecture", ["bert", "roberta"])
def test_hard_prompt_scores_are_the_models_own_mask_logits(architecture, hard_prompt_module, make_batch, tiny_backbone):
    backbone = tiny_backbone(architecture)
    assert backbone.family == "masked_lm"
    module = hard_prompt_module(backbone, WORDS)
    batch = make_batch(backbone, TEXTS, "Review: {text} All in all it was{answer}.")
    mask = backbone.tokenizer.mask_token_id
    assert (batch["input_ids"][torch.arange(3), batch["answer_index"]] == mask).all()
    assert (batch["input_ids"][:, 0] == backbone.tokenizer.cls_token_id).all()  # the tokenizer's own specials
    with torch.no_grad():
        ours = module(batch)
        logits = backbone.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    assert torch.allclose(ours, logits[torch.arange(3), batch["answer_index"]][:, label_ids(backbone)], atol=1e-5)


def test_prompt_tuning_scores_match_the_model_on_the_same_embeddings(make_batch, method_module, tiny_backbone):
    backbone = tiny_backbone("bert")
    module = method_module("prompt_tuning", backbone, WORDS, n=3)
    batch = make_batch(backbone, TEXTS, "[P:3]Review: {text}")  # no {answer}: the mask goes at the end
    with torch.no_grad():
        ours = module(batch)
        logits = backbone.model(inputs_embeds=module.embed_inputs(batch), attention_mask=batch["attention_mask"]).logits
    assert torch.allclose(ours, logits[torch.arange(3), batch["answer_index"]][:, label_ids(backbone)], atol=1e-5)


def test_multi_token_words_are_rejected_for_masked_lms(method_module, tiny_backbone):
    backbone = tiny_backbone("bert")
    with pytest.raises(ConfigError, match=r"task\.verbalizer\.0=.*scores one answer token"):
        method_module("prompt_tuning", backbone, [[" bad"], [" good"]], n=3)


def test_prefix_reaches_every_bert_layer(make_batch, method_module, tiny_backbone):
    backbone = tiny_backbone("bert")
    module = method_module("p_tuning_v2", backbone, WORDS, n=3, init="random_normal")
    batch = make_batch(backbone, TEXTS, "{text} is{answer}.")
    with torch.no_grad():
        with_prefix = backbone.model.base_model(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], output_hidden_states=True,
            **module.attention_kwargs()).hidden_states
        plain = backbone.model.base_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                          output_hidden_states=True).hidden_states
    assert torch.equal(with_prefix[0], plain[0])  # embeddings are untouched
    for layer in range(1, len(plain)):
        assert not torch.allclose(with_prefix[layer], plain[layer], atol=1e-4), layer
