"""Cartridges (Eyuboglu et al. 2025, "Cartridges: Lightweight and general-purpose long context representations via
self-study"): a trainable key/value cache of `n` positions in every attention layer, stored and trained directly
(no MLP, as P-tuning v2's prefix), as PEFT's CARTRIDGE (peft/tuners/cartridge).

Two things set it apart from P-tuning v2:
- its first `num_frozen_tokens` positions (default 1) never train: the paper (and PEFT) freeze the first token,
  which models use as an attention sink. They are a buffer here, so they have no gradient, sit in no optimizer
  and count in no trainable-parameter total, yet belong to the folded prefix (inference needs them), to the
  checkpoint (resume reloads them as saved) and to PEFT's `prompt_embeddings` (PEFT splits it on load);
- `init=prefill` starts it as the frozen model having read `method.init_text`: the keys and values (after position
  encoding) of the text's first `n` positions, as PEFT's `initialize_kv_prefix_from_text` copies them from a
  prefill's cache (the text as plain tokens, with the tokenizer's own special tokens, or with
  `use_chat_template=true` as a system message, PEFT's default). The prefill reads the text at positions 0..n-1,
  and real tokens' positions start at n (`position_offset`, as PEFT places them after `past_key_values`), so an
  untrained cartridge of a text of exactly n tokens gives the logits of the backbone reading that text followed
  by the input (tested on Llama's rotary and GPT-2's absolute positions).

Random inits draw the whole cache (PEFT's nn.Embedding init, N(0, 1), is `random_normal` with `init_std=1.0`).
Everything else (injection, generation, gradient checkpointing, mixed batches, inspection) is the key/value
prefix's (`prefixes.py`), which this class inherits unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any, ClassVar, Literal

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from softprompt.backbones.attention_prefix import CAPTURE_KWARG, KVCapture
from softprompt.backbones.families import Family
from softprompt.config.typed import at_least
from softprompt.errors import ConfigError
from softprompt.methods.base import NotRepresentable, PeftForm
from softprompt.methods.config import PromptConfig
from softprompt.methods.init import ARTIFACT_INIT, RANDOM_INITS, InitContext
from softprompt.methods.prefixes import KeyValuePrefix

PREFILL_INIT = "prefill"
INITS = (PREFILL_INIT, *RANDOM_INITS, ARTIFACT_INIT)
PEFT_TYPE = "CARTRIDGE"


@dataclass(frozen=True)
class CartridgeConfig(PromptConfig):
    """The cache's length and init, how many of its first tokens stay frozen, and how the init text is read."""

    slots: Literal["none"]
    num_frozen_tokens: int = field(metadata=at_least(0))
    use_chat_template: bool  # init=prefill: the text as a system message through the tokenizer's chat template

    def validate(self) -> None:
        if self.init not in INITS:
            raise ConfigError("method.init", self.init, f"allowed: {', '.join(INITS)}")
        if self.init == PREFILL_INIT and not self.init_text:
            raise ConfigError("method.init_text", self.init_text, "init=prefill needs a non-empty text to prefill")
        # Prompt tuning's rules for the rest (init_artifact); prefill is no input-level strategy, so it is
        # checked as a random init there.
        PromptConfig.validate(replace(self, init=RANDOM_INITS[0]) if self.init == PREFILL_INIT else self)
        if self.num_frozen_tokens >= self.num_virtual_tokens:
            raise ConfigError("method.num_frozen_tokens", self.num_frozen_tokens,
                              f"must be below method.num_virtual_tokens={self.num_virtual_tokens}: with every "
                              "virtual token frozen nothing trains")


def prefill_ids(tokenizer: PreTrainedTokenizerBase, text: str, use_chat_template: bool) -> list[int]:
    """The tokens a prefill reads: `text` as a system message through the chat template, or as plain tokens with
    the tokenizer's own special tokens (PEFT's initialize_kv_prefix_from_text)."""
    if not use_chat_template:
        return list(tokenizer(text).input_ids)
    if not getattr(tokenizer, "chat_template", None):  # PEFT falls back to plain tokens silently; we say so
        raise ConfigError("method.use_chat_template", True, "the backbone's tokenizer has no chat template; set "
                          "method.use_chat_template=false to prefill the text as plain tokens")
    return list(tokenizer.apply_chat_template([{"role": "system", "content": text}], tokenize=True,
                                              add_generation_prompt=False, return_dict=False))


class Cartridge(KeyValuePrefix):
    """A key/value cache per layer, trained directly, its first `num_frozen_tokens` positions frozen."""

    Config = CartridgeConfig
    # Nothing computes away: the folded prefix is the whole cache, frozen positions included.
    folded_config: ClassVar[Mapping[str, Any]] = MappingProxyType({})
    folded_away: ClassVar[tuple[str, ...]] = ()
    peft_imports: ClassVar[Mapping[str, list[str]]] = {PEFT_TYPE: ["method=cartridge"]}

    def __init__(self, config: CartridgeConfig, *, init_context: InitContext | None = None, **common) -> None:
        super().__init__(config, **common)
        self.num_frozen_tokens = config.num_frozen_tokens
        n = config.num_virtual_tokens
        if init_context is None:  # placeholders: the cache comes from `load_folded_state` (a trained cartridge's)
            self._set_prefix(torch.zeros(n, self.flat_width))
        elif config.init == PREFILL_INIT:
            self._set_prefix(self._prefilled(init_context, config.use_chat_template))
        else:
            self._set_prefix(self._initial_prefix(config.init, n, init_context))

    # -- PEFT: CARTRIDGE stores the whole cache as prompt_embeddings and splits off the frozen rows on load ---------
    @classmethod
    def peft_form(cls, config: CartridgeConfig, family: Family) -> PeftForm:
        if family == Family.SEQ2SEQ:
            raise NotRepresentable(f"{config.name} on a seq2seq backbone also prefixes the encoder's self-attention; "
                                   "PEFT's CARTRIDGE serves its cache as the decoder's past_key_values only")
        frozen = {"num_frozen_tokens": config.num_frozen_tokens}
        return PeftForm(PEFT_TYPE, "prefix", frozen, frozen)

    @classmethod
    def peft_import_overrides(cls, adapter_config: Mapping[str, Any]) -> list[str]:
        return [*super().peft_import_overrides(adapter_config),
                f"method.num_frozen_tokens={int(adapter_config.get('num_frozen_tokens', 1))}"]

    @classmethod
    def check_peft_import(cls, adapter_config: Mapping[str, Any], width: int) -> None:
        if adapter_config.get("task_type") == "SEQ_2_SEQ_LM":
            raise NotRepresentable("a SEQ_2_SEQ_LM CARTRIDGE adapter serves the decoder only; our prefixes also go "
                                   "into the encoder's self-attention")
        frozen, n = int(adapter_config.get("num_frozen_tokens", 1)), int(adapter_config.get("num_virtual_tokens", 0))
        if frozen >= n:
            raise NotRepresentable(f"num_frozen_tokens={frozen} freezes all {n} virtual tokens: a cartridge here "
                                   "keeps at least one trainable")

    def inspect(self, tokenizer: PreTrainedTokenizerBase, top_k: int) -> list[str]:
        first, *rest = super().inspect(tokenizer, top_k)
        return [f"{first}, the first {self.num_frozen_tokens} frozen (never trained)", *rest]

    # -- the cache ---------------------------------------------------------------------------------------------
    def _set_prefix(self, prefix: torch.Tensor) -> None:
        """Split a full (n, layers x 2 x kv_heads x head_dim) cache: frozen rows a buffer, the rest trainable."""
        k = self.num_frozen_tokens
        # A buffer: no gradient, no optimizer, not a trainable parameter; persistent, so checkpoints hold it.
        self.register_buffer("frozen_prefix", prefix[:k].detach().clone().float(), persistent=True)
        self.trainable_prefix = nn.Parameter(prefix[k:].detach().clone().float())

    def _prefilled(self, ctx: InitContext, use_chat_template: bool) -> torch.Tensor:
        """The keys/values of the first n positions of the frozen backbone reading ctx.init_text (PEFT's layout)."""
        n, (roles, _, _) = self.num_virtual_tokens, self.geometry
        tokens = prefill_ids(ctx.tokenizer, str(ctx.init_text), use_chat_template)
        if len(tokens) < n:
            how = " with the chat template" if use_chat_template else ""
            raise ConfigError("method.init_text", ctx.init_text, f"is {len(tokens)} tokens{how} on this backbone's "
                              f"tokenizer; init=prefill takes the first method.num_virtual_tokens={n} cached "
                              "positions: give a longer text or fewer virtual tokens")
        ids = torch.tensor([tokens], device=next(self.backbone.parameters()).device)
        capture = KVCapture()
        # The whole text, as PEFT's prefill reads it (a bidirectional encoder's first n keys see all of it).
        inputs = {"decoder_input_ids": ids} if self.backbone.config.is_encoder_decoder else {}
        with torch.no_grad():
            self.backbone.base_model(input_ids=ids, use_cache=False, **inputs, **{CAPTURE_KWARG: capture})
        per_layer = [torch.stack([capture.keys[role, i][0, :, :n], capture.values[role, i][0, :, :n]])
                     for role, count in roles.items() for i in range(count)]
        return torch.stack(per_layer).permute(3, 0, 1, 2, 4).reshape(n, -1).float()  # (n, L*2*H*hd)

    def flat_prefix(self) -> torch.Tensor:
        """(num_virtual_tokens, layers x 2 x kv_heads x head_dim): the frozen rows, then the trained ones, fp32."""
        return torch.cat([self.frozen_prefix, self.trainable_prefix])

    def set_folded(self, tensors: dict[str, torch.Tensor]) -> None:
        """The folded cache (every position), split into its frozen and trainable rows."""
        self._set_prefix(tensors["prefix"])
