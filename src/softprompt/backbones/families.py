"""Backbone family adapters: how to run the body, where the answer is, and cheap output rows."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import PreTrainedModel


class CausalLMAdapter:
    """Decoder-only LMs (Llama, Qwen, GPT-2, SmolLM2): the answer is the next token after the template.

    Stateless: every call takes the model, so wrappers (DDP, FSDP) never hold a stale reference.
    """

    family = "causal_lm"

    @staticmethod
    def embed(model: PreTrainedModel, input_ids: torch.Tensor) -> torch.Tensor:
        return model.get_input_embeddings()(input_ids)

    @staticmethod
    def hidden_states(model: PreTrainedModel, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor,
                      position_offset: int = 0, **attention_kwargs) -> torch.Tensor:
        """Final hidden states of the body (no LM head).

        Position ids count real tokens only (so padding never shifts them), starting at
        `position_offset` (the prefix length for attention-level prompts, as PEFT places them).
        """
        position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0) + position_offset
        output = model.base_model(inputs_embeds=inputs_embeds, attention_mask=attention_mask,
                                  position_ids=position_ids, use_cache=False, **attention_kwargs)
        return output.last_hidden_state

    @staticmethod
    def row_logits(model: PreTrainedModel, hidden: torch.Tensor, token_ids: torch.Tensor) -> torch.Tensor:
        """Logits of only `token_ids`: a few rows of the output layer instead of the whole vocabulary."""
        head = model.get_output_embeddings()
        bias = head.bias[token_ids] if getattr(head, "bias", None) is not None else None
        return F.linear(hidden, head.weight[token_ids].to(hidden.dtype), bias)

    @staticmethod
    def vocab_log_probs(model: PreTrainedModel, hidden: torch.Tensor) -> torch.Tensor:
        return torch.log_softmax(model.get_output_embeddings()(hidden).float(), dim=-1)


FAMILY_ADAPTERS = {"causal_lm": CausalLMAdapter}
