"""Settings mean what the papers mean: Lester's LM loss, prefixes in every attention layer, honest optimizer and
scheduler presets."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from helpers import ARCHITECTURES, make_batch, method_module, tiny_backbone
from softprompt.backbones.attention_prefix import UnreachableAttentionError, reached_layers
from softprompt.backbones.families import FAMILY_ADAPTERS
from softprompt.config.compose import compose_train
from softprompt.data.verbalizer import label_token_ids
from softprompt.errors import ConfigError
from softprompt.objectives import ClassificationObjective
from softprompt.training.checks import check_optimizer

TEMPLATE = "Review: {text}\nSentiment:"
MASKED_TEMPLATE = "Review: {text} It was{answer}."
TEXTS = ["a fine film", "dull", "it goes on and on"]


def lm_objective(backbone, words):
    return ClassificationObjective(label_token_ids(words, backbone.tokenizer), FAMILY_ADAPTERS[backbone.family],
                                   backbone.hidden_size, loss="lm")


def test_lm_loss_is_the_full_vocabulary_loss_on_each_label_word():
    backbone = tiny_backbone()
    words = [["n"], ["p"]]
    module = method_module("prompt_tuning", backbone, words, n=3, objective=lm_objective(backbone, words))
    batch = make_batch(backbone, TEXTS, "[P:3]" + TEMPLATE, labels=[0, 1, 1])
    loss = module.objective.loss(module, batch)
    embeds = module.embed_inputs(batch)
    positions = (batch["attention_mask"].cumsum(-1) - 1).clamp(min=0)
    logits = backbone.model(inputs_embeds=embeds, attention_mask=batch["attention_mask"], position_ids=positions).logits
    at_answer = logits[torch.arange(3), batch["answer_index"]]
    gold = torch.tensor([backbone.tokenizer.convert_tokens_to_ids(w) for w in ("n", "p", "p")])
    assert torch.allclose(loss, F.cross_entropy(at_answer, gold), atol=1e-6)
    verbalizer_loss = F.cross_entropy(module.objective.outputs(module, batch), batch["labels"])
    assert not torch.allclose(loss, verbalizer_loss)  # not a softmax over the two label words


def test_lm_loss_on_multi_token_words_is_teacher_forced_over_the_first_word():
    backbone = tiny_backbone()
    words = [["bad", "poor"], ["good"]]
    module = method_module("prompt_tuning", backbone, words, n=2, objective=lm_objective(backbone, words))
    batch = make_batch(backbone, TEXTS[:2], "[P:2]" + TEMPLATE, labels=[0, 1])
    loss = module.objective.loss(module, batch)
    total, count = 0.0, 0
    for row, word in enumerate(("bad", "good")):
        ids = backbone.tokenizer(word, add_special_tokens=False).input_ids
        length = int(batch["attention_mask"][row].sum())
        embeds = module.embed_inputs(batch)[row, :length]
        full = torch.cat([embeds, backbone.model.get_input_embeddings()(torch.tensor(ids[:-1]))])
        logits = backbone.model(inputs_embeds=full[None]).logits[0]
        log_probs = logits[length - 1:length - 1 + len(ids)].log_softmax(-1)
        total -= float(log_probs[torch.arange(len(ids)), torch.tensor(ids)].sum())
        count += len(ids)
    assert float(loss) == pytest.approx(total / count, abs=1e-5)


@pytest.mark.parametrize("architecture", ["bert", "t5"])
def test_lm_loss_scores_the_whole_vocabulary_on_masked_and_seq2seq_backbones(architecture):
    backbone = tiny_backbone(architecture)
    words = [["n"], ["p"]]
    module = method_module("prompt_tuning", backbone, words, n=2, objective=lm_objective(backbone, words))
    template = "[P:2]" + (MASKED_TEMPLATE if architecture == "bert" else TEMPLATE)
    batch = make_batch(backbone, TEXTS, template, labels=[1, 0, 1])
    adapter = module.adapter
    hidden = adapter.answer_hidden(module.hidden_states(batch), batch)
    vocab = adapter.vocab_logits(backbone.model, hidden).float()
    gold = torch.tensor([backbone.tokenizer.convert_tokens_to_ids(w) for w in ("p", "n", "p")])
    assert torch.allclose(module.objective.loss(module, batch), F.cross_entropy(vocab, gold), atol=1e-6)


def test_lm_loss_is_refused_where_a_head_scores_the_labels():
    backbone = tiny_backbone("bert_head")
    with pytest.raises(ConfigError, match=r"task.loss='lm' is invalid: a encoder_head backbone has no LM head"):
        lm_objective(backbone, [["n"], ["p"]])


def test_lester_prompt_tuning_trains_with_the_lm_loss_at_adafactor_lr_0_3():
    cfg = compose_train(["experiment=lester_prompt_tuning"])
    assert cfg.task.loss == "lm" and cfg.optimizer.lr == 0.3 and "Adafactor" in cfg.optimizer._target_


@pytest.mark.parametrize(("method", "lr"), [("prompt_tuning", 0.03), ("prefix_tuning", 1e-4), ("p_tuning", 0.003)])
def test_adafactor_follows_each_methods_preset_lr(method, lr):
    cfg = compose_train(["optimizer=adafactor", f"method={method}"])
    assert cfg.optimizer.lr == pytest.approx(lr)


def test_a_warmup_the_scheduler_would_ignore_is_refused():
    with pytest.raises(ConfigError, match=r"warmup_steps=10 is invalid: scheduler constant has no warmup"):
        check_optimizer({"lr": 0.1, "scheduler": {"name": "constant", "warmup_steps": 10}})
    check_optimizer({"lr": 0.1, "scheduler": {"name": "constant_with_warmup", "warmup_steps": 10}})
    check_optimizer({"lr": 0.1, "scheduler": {"name": "constant", "warmup_steps": 0}})
    with pytest.raises(ConfigError, match=r"warmup_steps=-1 is invalid: must be an integer >= 0"):
        check_optimizer({"lr": 0.1, "scheduler": {"name": "linear", "warmup_steps": -1}})


@pytest.mark.parametrize("architecture", [a for a in ARCHITECTURES if a != "bert_head"])
def test_a_prefix_reaches_every_attention_layer_of_every_family(architecture):
    backbone = tiny_backbone(architecture)
    words = None if architecture == "bert_head" else [["n"], ["p"]]
    module = method_module("p_tuning_v2", backbone, words, n=2)
    roles = module.geometry[0]
    reached = reached_layers(backbone.model)
    assert {role: sorted(layers) for role, layers in reached.items()} == {
        role: list(range(count)) for role, count in roles.items()}


def test_an_architecture_whose_attention_a_prefix_cannot_reach_is_refused():
    backbone = tiny_backbone()
    attention = backbone.model.model.layers[1].self_attn
    config = copy.copy(attention.config)
    config._attn_implementation = "eager"  # this layer no longer calls the attention interface we wrap
    attention.config = config
    with pytest.raises(UnreachableAttentionError, match=r"reaches 1 of 2 self-attention layers"):
        method_module("prefix_tuning", backbone, [["n"], ["p"]], n=2)
