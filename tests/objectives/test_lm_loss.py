"""task.loss=lm means what Lester et al. mean: the full-vocabulary LM loss on each label word, on every family
that has an LM head."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from softprompt.errors import ConfigError

TEMPLATE = "Review: {text}\nSentiment:"
MASKED_TEMPLATE = "Review: {text} It was{answer}."
TEXTS = ["a fine film", "dull", "it goes on and on"]


@pytest.fixture(scope="module")
def lm_objective(classification_objective):
    return lambda backbone, words: classification_objective(backbone, words, loss="lm")


def test_lm_loss_is_the_full_vocabulary_loss_on_each_label_word(tiny_backbone, method_module, make_batch,
                                                                lm_objective):
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


def test_lm_loss_on_multi_token_words_is_teacher_forced_over_the_first_word(tiny_backbone, method_module, make_batch,
                                                                            lm_objective):
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
def test_lm_loss_scores_the_whole_vocabulary_on_masked_and_seq2seq_backbones(architecture, tiny_backbone,
                                                                             method_module, make_batch, lm_objective):
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


def test_lm_loss_is_refused_where_a_head_scores_the_labels(tiny_backbone, lm_objective):
    backbone = tiny_backbone("bert_head")
    with pytest.raises(ConfigError, match=r"task.loss='lm' is invalid: a encoder_head backbone has no LM head"):
        lm_objective(backbone, [["n"], ["p"]])
