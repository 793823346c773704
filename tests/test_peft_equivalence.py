"""Invariant 3: the same prompt tensor through PEFT and through us gives the same logits."""

from __future__ import annotations

import torch
from peft import PromptTuningConfig, TaskType, get_peft_model

from helpers import make_batch, prompt_module, tiny_backbone

TEXTS = ["short", "a somewhat longer review of a film", "middling"]


def test_prompt_tuning_label_logits_match_peft():
    backbone = tiny_backbone()
    n = 5
    module = prompt_module(backbone, [["n"], ["p"]], n=n, init="random_uniform")
    peft_model = get_peft_model(backbone.model, PromptTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=n))
    with torch.no_grad():
        peft_model.prompt_encoder["default"].embedding.weight.copy_(module.prompt)
        ours = module(make_batch(backbone, TEXTS, f"[P:{n}]Review: {{text}}\nSentiment:"))
        plain = make_batch(backbone, TEXTS, "Review: {text}\nSentiment:")  # PEFT prepends the prompt itself
        logits = peft_model(input_ids=plain["input_ids"], attention_mask=plain["attention_mask"]).logits
    label_ids = [backbone.tokenizer("n").input_ids[0], backbone.tokenizer("p").input_ids[0]]
    rows = torch.arange(len(TEXTS))
    theirs = logits[rows, n + plain["answer_index"]][:, label_ids]
    assert theirs.shape == ours.shape
    assert torch.allclose(ours, theirs, atol=1e-5)
