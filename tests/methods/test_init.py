"""The initialisation strategies of Lester et al. 2021."""

from __future__ import annotations

import pytest
import torch

from softprompt.data.verbalizer import label_token_ids
from softprompt.errors import ConfigError
from softprompt.methods.init import INIT_STRATEGIES, initial_embeddings


@pytest.fixture(scope="module")
def backbone(tiny_backbone):
    return tiny_backbone()


@pytest.fixture(scope="module")
def token_ids(backbone):
    return label_token_ids([[" bad"], [" good"]], backbone.tokenizer)


def embeddings(backbone):
    return backbone.model.get_input_embeddings().weight.detach()


def test_random_uniform_is_in_range(backbone, token_ids, init_context):
    out = initial_embeddings("random_uniform", 200, init_context(backbone, token_ids, init_range=0.5))
    assert out.shape == (200, backbone.hidden_size) and out.dtype == torch.float32
    assert out.abs().max() <= 0.5 and out.abs().max() > 0.45  # fills the range
    assert abs(out.mean()) < 0.02


def test_random_normal_matches_embedding_std_by_default(backbone, token_ids, init_context):
    out = initial_embeddings("random_normal", 400, init_context(backbone, token_ids))
    assert out.std().item() == pytest.approx(embeddings(backbone).std().item(), rel=0.1)
    explicit = initial_embeddings("random_normal", 400, init_context(backbone, token_ids, init_std=3.0))
    assert explicit.std().item() == pytest.approx(3.0, rel=0.1)


def test_vocab_draws_rows_of_the_most_frequent_tokens(backbone, token_ids, init_context):
    out = initial_embeddings("vocab", 20, init_context(backbone, token_ids, init_vocab_size=5))
    frequent = embeddings(backbone)[10:15]
    for row in out:  # every row is one of the 5 most frequent tokens' embeddings
        assert any(torch.equal(row, f) for f in frequent)
    rare = embeddings(backbone)[15:60]
    assert not any(torch.equal(row, r) for row in out for r in rare)


def test_vocab_without_replacement_when_k_allows(backbone, token_ids, init_context):
    out = initial_embeddings("vocab", 30, init_context(backbone, token_ids, init_vocab_size=50))
    assert len({tuple(r.tolist()) for r in out}) == 30


def test_text_repeats_or_truncates(backbone, token_ids, init_context):
    ctx = init_context(backbone, token_ids, init_text="abc")
    ids = backbone.tokenizer("abc", add_special_tokens=False).input_ids
    out = initial_embeddings("text", 7, ctx)
    expected = embeddings(backbone)[torch.tensor((ids * 3)[:7])]
    assert torch.equal(out, expected)
    assert torch.equal(initial_embeddings("text", 2, ctx), embeddings(backbone)[torch.tensor(ids[:2])])


def test_class_labels_first_then_vocab(backbone, token_ids, init_context):
    out = initial_embeddings("class_labels", 5, init_context(backbone, token_ids))
    for row, words in zip(out[:2], token_ids, strict=True):  # multi-token label words are averaged
        assert torch.allclose(row, embeddings(backbone)[torch.tensor(words[0])].mean(0))
    frequent = embeddings(backbone)[10:60]
    assert all(any(torch.equal(row, f) for f in frequent) for row in out[2:])
    assert initial_embeddings("class_labels", 1, init_context(backbone, token_ids)).shape == (1, backbone.hidden_size)


@pytest.mark.parametrize("init", sorted(INIT_STRATEGIES))
def test_every_init_is_deterministic_in_the_seed(backbone, token_ids, init, init_context):
    first = initial_embeddings(init, 6, init_context(backbone, token_ids, seed=1))
    again = initial_embeddings(init, 6, init_context(backbone, token_ids, seed=1))
    assert torch.equal(first, again)
    if init in ("random_uniform", "random_normal", "vocab"):
        assert not torch.equal(first, initial_embeddings(init, 6, init_context(backbone, token_ids, seed=2)))


def test_unknown_init_is_rejected(backbone, token_ids, init_context):
    with pytest.raises(ConfigError, match=r"method\.init='xavier'.*allowed: random_uniform"):
        initial_embeddings("xavier", 3, init_context(backbone, token_ids))
