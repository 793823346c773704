"""A tiny randomly initialised causal LM with a byte-level tokenizer: no assets, seconds to run."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedModel, PreTrainedTokenizerFast

SPECIAL_TOKENS = ["<pad>", "<eos>", "<unk>"]


def byte_level_tokenizer() -> PreTrainedTokenizerFast:
    """Every byte is one token (ids 3..258), after three special tokens."""
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    for symbol in sorted(alphabet):
        vocab[symbol] = len(vocab)
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    backend.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>"
    )


def build_tiny_random(model_config: Mapping, init_seed: int, dtype: torch.dtype):
    """Return (model, tokenizer); the same `init_seed` always gives bit-identical weights."""
    tokenizer = byte_level_tokenizer()
    settings = dict(model_config)
    model_type = settings.pop("model_type")
    config = AutoConfig.for_model(
        model_type,
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
        **settings,
    )
    devices = []  # fork_rng must not touch CUDA state here
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(init_seed)
        model: PreTrainedModel = AutoModelForCausalLM.from_config(config, dtype=dtype)
    return model, tokenizer
