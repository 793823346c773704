"""The seq2seq family (T5, BART): prompts on the encoder input, the answer at the decoder's first step,
prefixes in encoder self-, decoder self- and cross-attention. (Batch invariance and folding on T5 and BART, for every
method, are in test_method_contract.py.)"""

from __future__ import annotations

import pytest
import torch

from softprompt.backbones.attention_prefix import PREFIX_KWARG, ROLE_ATTRIBUTE, PrefixKV
from softprompt.backbones.families import PromptedInput

TEXTS = ["ok", "a much longer review that goes on", "middling"]
WORDS = [["n"], ["p"]]


def first_step_logits(backbone, batch, inputs_embeds=None):
    start = torch.full((len(batch["input_ids"]), 1), backbone.model.config.decoder_start_token_id)
    inputs = {"inputs_embeds": inputs_embeds} if inputs_embeds is not None else {"input_ids": batch["input_ids"]}
    logits = backbone.model(**inputs, attention_mask=batch["attention_mask"], decoder_input_ids=start).logits[:, 0]
    return logits[:, [backbone.tokenizer(w[0], add_special_tokens=False).input_ids[0] for w in WORDS]]


@pytest.mark.parametrize("architecture", ["t5", "bart"])
def test_scores_are_the_models_own_first_decoder_step(architecture, hard_prompt_module, make_batch, method_module,
                                                      tiny_backbone):
    backbone = tiny_backbone(architecture)
    assert backbone.family == "seq2seq"
    hard = hard_prompt_module(backbone, WORDS)
    soft = method_module("prompt_tuning", backbone, WORDS, n=3)
    plain, prompted = make_batch(backbone, TEXTS, "Review: {text}"), make_batch(backbone, TEXTS, "[P:3]Review: {text}")
    with torch.no_grad():
        assert torch.allclose(hard(plain), first_step_logits(backbone, plain), atol=1e-5)
        expected = first_step_logits(backbone, prompted, soft.embed_inputs(prompted))
        assert torch.allclose(soft(prompted), expected, atol=1e-5)


def test_word_init_gives_every_role_the_words_own_keys(method_module, tiny_backbone):
    """Li & Liang's real-word init on T5: encoder self-, decoder self- and cross-attention prefixes all
    start as the keys those words produce there (layer 0 recomputed by hand)."""
    backbone = tiny_backbone("t5")
    text = "so it goes"
    module = method_module("p_tuning_v2", backbone, WORDS, n=len(text), init="text", init_text=text)
    prefix = module.attention_kwargs()[PREFIX_KWARG]
    model = backbone.model
    ids = torch.tensor([backbone.tokenizer(text, add_special_tokens=False).input_ids])
    heads = lambda x: x.view(1, len(text), 4, 8).transpose(1, 2)  # noqa: E731
    with torch.no_grad():
        embeds = model.shared(ids)
        encoder_block, decoder_block = model.encoder.block[0].layer, model.decoder.block[0].layer
        expected = {
            "encoder": heads(encoder_block[0].SelfAttention.k(encoder_block[0].layer_norm(embeds))),
            "decoder": heads(decoder_block[0].SelfAttention.k(decoder_block[0].layer_norm(embeds))),
            "cross": heads(decoder_block[1].EncDecAttention.k(model.encoder(input_ids=ids).last_hidden_state)),
        }
    for role, keys in expected.items():
        torch.testing.assert_close(prefix.keys[role][0], keys, rtol=1e-5, atol=1e-5)


def test_prefix_sizes_cover_encoder_decoder_and_cross_attention(method_module, tiny_backbone):
    backbone = tiny_backbone("t5")
    module = method_module("p_tuning_v2", backbone, WORDS, n=3, init="random_normal")
    layers = 2 + 2 + 2  # encoder self, decoder self, cross
    assert module.num_trainable_params() == 3 * layers * 2 * 4 * 8


@pytest.mark.parametrize("role", ["encoder", "decoder", "cross"])
def test_a_prefix_on_t5_changes_exactly_its_attention(role, make_batch, method_module, tiny_backbone):
    backbone = tiny_backbone("t5", fresh=True)  # it gets forward hooks
    module = method_module("p_tuning_v2", backbone, WORDS, n=3, init="random_normal")
    full = module.attention_kwargs()[PREFIX_KWARG]
    only = PrefixKV(keys={role: full.keys[role]}, values={role: full.values[role]})
    outputs: dict[str, list] = {}
    for candidate in backbone.model.modules():
        if getattr(candidate, ROLE_ATTRIBUTE, None) and candidate.layer_idx == 0:
            name = getattr(candidate, ROLE_ATTRIBUTE)
            candidate.register_forward_hook(lambda m, a, out, n=name: outputs.setdefault(n, []).append(out[0]))
    batch = make_batch(backbone, TEXTS, "Review: {text}")
    embeds = backbone.model.get_input_embeddings()(batch["input_ids"])
    with torch.no_grad():
        module.adapter.hidden_states(backbone.model, PromptedInput(embeds, batch["attention_mask"]))
        module.adapter.hidden_states(backbone.model, PromptedInput(embeds, batch["attention_mask"],
                                                                   attention={PREFIX_KWARG: only}))
    assert not torch.allclose(outputs[role][0], outputs[role][1], atol=1e-4)  # the prefixed attention changed
    upstream = {"encoder": [], "decoder": ["encoder"], "cross": ["decoder"]}[role]
    for other in ("encoder", "decoder"):
        if other != role and other not in upstream:  # an attention the prefix cannot reach stays the same
            assert torch.allclose(outputs[other][0], outputs[other][1], atol=1e-6), other
