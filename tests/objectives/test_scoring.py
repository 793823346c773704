"""Verbalizer scoring against an independent full-logits reference, and padding invariance."""

from __future__ import annotations

import pytest
import torch

TEXTS = ["ok", "a much longer review that goes on and on", "mid-length text here", "é ü ñ"]
TEMPLATE = "[P:4]Review: {text}\nSentiment:"


@pytest.fixture(scope="module", params=["gpt2", "llama", "qwen2"])  # the causal-LM architectures of tiny_backbone
def backbone(request, tiny_backbone):
    return tiny_backbone(request.param)


@pytest.fixture(scope="module")
def reference_scores(make_batch):
    """`reference_scores(module, backbone, text, words)`: full-vocabulary log-probs from the model's own forward
    on [prompt; text; word], one example."""

    def scores_of(module, backbone, text: str, words: list[list[str]]) -> torch.Tensor:
        batch = make_batch(backbone, [text], TEMPLATE)
        embeds = module.embed_inputs(batch)
        scores = []
        for label_words in words:
            per_word = []
            for word in label_words:
                ids = torch.tensor(backbone.tokenizer(word, add_special_tokens=False).input_ids)
                full = torch.cat([embeds[0], backbone.model.get_input_embeddings()(ids)])[None]
                logits = backbone.model(inputs_embeds=full).logits.log_softmax(-1)[0]
                start = embeds.shape[1] - 1
                per_word.append(torch.stack([logits[start + j, t] for j, t in enumerate(ids)]).mean())
            scores.append(torch.stack(per_word).mean())
        return torch.stack(scores)

    return scores_of


@pytest.mark.parametrize("words", [[[" negative"], [" positive"]],  # multi-token words (byte-level)
                                   [["n", " bad"], ["p"]]])         # several words for one label
def test_scores_match_full_logits_reference(backbone, words, make_batch, prompt_module, reference_scores):
    torch.manual_seed(0)
    module = prompt_module(backbone, words)
    with torch.no_grad():
        ours = module(make_batch(backbone, TEXTS, TEMPLATE))
        for row, text in enumerate(TEXTS):
            assert torch.allclose(ours[row], reference_scores(module, backbone, text, words), atol=1e-5)


def test_single_token_scores_are_label_rows_of_the_logits(backbone, make_batch, prompt_module, reference_scores):
    words = [["n"], ["p"]]
    module = prompt_module(backbone, words)
    with torch.no_grad():
        ours = module(make_batch(backbone, TEXTS, TEMPLATE))
        reference = torch.stack([reference_scores(module, backbone, t, words) for t in TEXTS])
    # Only the label rows are computed, so scores differ from log-probs by the per-example normaliser.
    assert torch.allclose((ours - reference).std(-1), torch.zeros(len(TEXTS)), atol=1e-5)
    assert torch.allclose(ours.log_softmax(-1), reference.log_softmax(-1), atol=1e-5)


@pytest.mark.parametrize("words", [[["n"], ["p"]], [[" negative"], [" positive"]]])
def test_scores_do_not_depend_on_batch_mates_or_padding_side(backbone, words, make_batch, prompt_module):
    module = prompt_module(backbone, words)
    with torch.no_grad():
        alone = torch.cat([module(make_batch(backbone, [t], TEMPLATE)) for t in TEXTS])
        right = module(make_batch(backbone, TEXTS, TEMPLATE, padding_side="right"))
        left = module(make_batch(backbone, TEXTS, TEMPLATE, padding_side="left"))
        reordered = module(make_batch(backbone, TEXTS[::-1], TEMPLATE, padding_side="left")).flip(0)
    for batched in (right, left, reordered):
        assert torch.allclose(alone, batched, atol=1e-5)


def test_position_ids_skip_left_padding(backbone, make_batch):
    batch = make_batch(backbone, TEXTS, TEMPLATE, padding_side="left")
    positions = (batch["attention_mask"].cumsum(-1) - 1).clamp(min=0)
    lengths = batch["attention_mask"].sum(-1)
    for row in range(len(TEXTS)):
        real = positions[row][batch["attention_mask"][row].bool()]
        assert torch.equal(real, torch.arange(int(lengths[row])))
