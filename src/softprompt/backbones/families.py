"""Backbone family adapters: how to run the body, where the answer is, and cheap label scores.

Adapters are stateless: every call takes the model, so wrappers (DDP, FSDP) never hold a stale
reference.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from softprompt.errors import ConfigError


class FamilyAdapter:
    family = ""
    needs_head = False  # True: a trainable linear head scores labels instead of a verbalizer
    supports_left_padding = True
    answer_is_next_token = False  # True: the answer follows the template, so {answer} must end it

    @staticmethod
    def embed(model: PreTrainedModel, input_ids: torch.Tensor) -> torch.Tensor:
        return model.get_input_embeddings()(input_ids)

    @staticmethod
    def position_start(model: PreTrainedModel) -> int:
        """The position id of the first real token (RoBERTa-style models start after padding_idx)."""
        embeddings = getattr(model.base_model, "embeddings", None)
        padding_idx = getattr(embeddings, "padding_idx", None)
        return padding_idx + 1 if padding_idx is not None else 0

    @classmethod
    def hidden_states(cls, model: PreTrainedModel, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor,
                      position_offset: int = 0, **attention_kwargs) -> torch.Tensor:
        """Final hidden states of the body (no head).

        Position ids count real tokens only (so padding never shifts them), starting at
        `position_offset` (the prefix length for attention-level prompts, as PEFT places them).
        """
        positions = (attention_mask.cumsum(-1) - 1).clamp(min=0) + position_offset + cls.position_start(model)
        output = model.base_model(inputs_embeds=inputs_embeds, attention_mask=attention_mask,
                                  position_ids=positions, use_cache=False, **attention_kwargs)
        return output.last_hidden_state

    @staticmethod
    def answer_token_id(tokenizer: PreTrainedTokenizerBase) -> int | None:
        """The token placed at the template's answer position, if any."""
        return None

    @staticmethod
    def answer_hidden(hidden: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """(batch, d): the hidden state that predicts the answer."""
        return hidden[torch.arange(len(hidden), device=hidden.device), batch["answer_index"]]

    @staticmethod
    def check_label_words(label_token_ids: Sequence[Sequence[Sequence[int]]],
                          label_names: Sequence[str] | None = None,
                          words: Sequence[Sequence[str]] | None = None) -> None:
        """Raise ConfigError for verbalizer words this family cannot score."""

    @staticmethod
    def row_logits(model: PreTrainedModel, hidden: torch.Tensor, token_ids: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    @staticmethod
    def vocab_log_probs(model: PreTrainedModel, hidden: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class CausalLMAdapter(FamilyAdapter):
    """Decoder-only LMs (Llama, Qwen, GPT-2, SmolLM2): the answer is the next token after the template."""

    family = "causal_lm"
    answer_is_next_token = True

    @staticmethod
    def position_start(model: PreTrainedModel) -> int:
        return 0

    @staticmethod
    def row_logits(model: PreTrainedModel, hidden: torch.Tensor, token_ids: torch.Tensor) -> torch.Tensor:
        """Logits of only `token_ids`: a few rows of the output layer instead of the whole vocabulary."""
        head = model.get_output_embeddings()
        bias = head.bias[token_ids] if getattr(head, "bias", None) is not None else None
        return F.linear(hidden, head.weight[token_ids].to(hidden.dtype), bias)

    @staticmethod
    def vocab_log_probs(model: PreTrainedModel, hidden: torch.Tensor) -> torch.Tensor:
        return torch.log_softmax(model.get_output_embeddings()(hidden).float(), dim=-1)


class MaskedLMAdapter(FamilyAdapter):
    """BERT, RoBERTa: the answer is the template's mask token, scored through the MLM head.

    The MLM head transforms the hidden state before its output layer, so the head runs on the
    answer positions only (never on every position).
    """

    family = "masked_lm"

    @staticmethod
    def _head(model: PreTrainedModel) -> torch.nn.Module:
        for name in ("cls", "lm_head", "generator_lm_head", "predictions"):
            if hasattr(model, name):
                return getattr(model, name)
        raise ConfigError("backbone.family", "masked_lm", f"{type(model).__name__} has no known MLM head")

    @staticmethod
    def answer_token_id(tokenizer: PreTrainedTokenizerBase) -> int | None:
        if tokenizer.mask_token_id is None:
            raise ConfigError("backbone.family", "masked_lm", "the tokenizer has no mask token")
        return tokenizer.mask_token_id

    @staticmethod
    def check_label_words(label_token_ids: Sequence[Sequence[Sequence[int]]],
                          label_names: Sequence[str] | None = None,
                          words: Sequence[Sequence[str]] | None = None) -> None:
        for label, per_label in enumerate(label_token_ids):
            name = label_names[label] if label_names else str(label)
            for index, tokens in enumerate(per_label):
                if len(tokens) != 1:
                    word = words[label][index] if words else f"{len(tokens)} tokens"
                    raise ConfigError(f"task.verbalizer.{name}", word, f"it is {len(tokens)} tokens, and this "
                                      "family scores one answer token (a mask or one decoder step)")

    @classmethod
    def row_logits(cls, model: PreTrainedModel, hidden: torch.Tensor, token_ids: torch.Tensor) -> torch.Tensor:
        return cls._head(model)(hidden)[..., token_ids].float()

    @classmethod
    def vocab_log_probs(cls, model: PreTrainedModel, hidden: torch.Tensor) -> torch.Tensor:
        return torch.log_softmax(cls._head(model)(hidden).float(), dim=-1)


class EncoderHeadAdapter(FamilyAdapter):
    """Encoders with no LM head (all-MiniLM, say): a trainable linear head on the pooled output."""

    family = "encoder_head"
    needs_head = True


class Seq2SeqAdapter(FamilyAdapter):
    """T5, BART: input-level prompts go on the encoder input; the answer is the decoder's first step
    (Lester et al.'s T5 setting). Prefixes go into encoder self-, decoder self- and cross-attention."""

    family = "seq2seq"
    supports_left_padding = False  # BART's learned positions are not mask-aware

    @staticmethod
    def hidden_states(model: PreTrainedModel, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor,
                      position_offset: int = 0, **attention_kwargs) -> torch.Tensor:
        """The decoder's first hidden state (batch, 1, d), after the encoder read the prompted input."""
        encoded = model.get_encoder()(inputs_embeds=inputs_embeds, attention_mask=attention_mask,
                                      **attention_kwargs).last_hidden_state
        start = torch.full((len(inputs_embeds), 1), model.config.decoder_start_token_id, dtype=torch.long,
                           device=inputs_embeds.device)
        decoder = model.get_decoder()
        return decoder(input_ids=start, encoder_hidden_states=encoded, encoder_attention_mask=attention_mask,
                       use_cache=False, **attention_kwargs).last_hidden_state

    @staticmethod
    def answer_hidden(hidden: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return hidden[:, 0]

    check_label_words = staticmethod(MaskedLMAdapter.check_label_words)  # one decoder step: single tokens

    @staticmethod
    def _logits(model: PreTrainedModel, hidden: torch.Tensor) -> torch.Tensor:
        if model.config.model_type == "t5" and model.config.tie_word_embeddings:
            hidden = hidden * model.config.d_model**-0.5  # as T5ForConditionalGeneration does
        logits = model.get_output_embeddings()(hidden)
        bias = getattr(model, "final_logits_bias", None)  # BART
        return logits + bias if bias is not None else logits

    @classmethod
    def row_logits(cls, model: PreTrainedModel, hidden: torch.Tensor, token_ids: torch.Tensor) -> torch.Tensor:
        return cls._logits(model, hidden)[..., token_ids].float()

    @classmethod
    def vocab_log_probs(cls, model: PreTrainedModel, hidden: torch.Tensor) -> torch.Tensor:
        return torch.log_softmax(cls._logits(model, hidden).float(), dim=-1)


FAMILY_ADAPTERS: dict[str, type[FamilyAdapter]] = {
    "seq2seq": Seq2SeqAdapter,
    "causal_lm": CausalLMAdapter,
    "masked_lm": MaskedLMAdapter,
    "encoder_head": EncoderHeadAdapter,
}
