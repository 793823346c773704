"""A tiny randomly initialised causal LM with a byte-level tokenizer: no assets, seconds to run."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedModel, PreTrainedTokenizerFast

SPECIAL_TOKENS = ["<pad>", "<eos>", "<unk>"]
MASKED_LM_SPECIALS = ["<cls>", "<sep>", "<mask>"]


def byte_level_tokenizer(with_mask_token: bool = False) -> PreTrainedTokenizerFast:
    """Every byte is one token, after the special tokens.

    `with_mask_token` adds BERT-style <cls>/<sep>/<mask> and wraps every input as <cls> ... <sep>.
    """
    specials = SPECIAL_TOKENS + (MASKED_LM_SPECIALS if with_mask_token else [])
    vocab = {tok: i for i, tok in enumerate(specials)}
    for symbol in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab[symbol] = len(vocab)
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    backend.decoder = decoders.ByteLevel()
    extra = {}
    if with_mask_token:
        backend.post_processor = processors.TemplateProcessing(
            single="<cls> $A <sep>", special_tokens=[("<cls>", vocab["<cls>"]), ("<sep>", vocab["<sep>"])])
        extra = {"cls_token": "<cls>", "sep_token": "<sep>", "mask_token": "<mask>"}
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", eos_token="<eos>",
                                   unk_token="<unk>", **extra)


def build_tiny_random(model_config: Mapping, init_seed: int, dtype: torch.dtype,
                      model_class: type = AutoModelForCausalLM, with_mask_token: bool = False):
    """Return (model, tokenizer); the same `init_seed` always gives bit-identical weights."""
    tokenizer = byte_level_tokenizer(with_mask_token)
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
        model: PreTrainedModel = model_class.from_config(config, dtype=dtype)
    return model, tokenizer
