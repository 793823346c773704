"""Backbone family adapters: how to run the body, where the answer is, and cheap label scores.

Adapters are stateless: every call takes the model, so wrappers (DDP, FSDP) never hold a stale
reference.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from transformers import DynamicCache, EncoderDecoderCache, PreTrainedModel, PreTrainedTokenizerBase

from softprompt.errors import ConfigError


class Family(StrEnum):
    """How a backbone reads a template and where its answer is (a string in configs, metrics.json and artifacts)."""

    CAUSAL_LM = "causal_lm"
    MASKED_LM = "masked_lm"
    SEQ2SEQ = "seq2seq"
    ENCODER_HEAD = "encoder_head"


@dataclass(frozen=True)
class PromptedInput:
    """One batch as the backbone reads it with a method's prompt in: the input embeddings (virtual tokens placed),
    the attention mask, where real tokens' position ids start (the prefix length for attention-level prompts: an
    int, or a (batch, 1) tensor of per-row offsets in mixed-prompt batches) and the keyword arguments that reach
    every attention call (key/value prefixes). Generation tasks add the answer position and the target tokens."""

    embeds: torch.Tensor
    attention_mask: torch.Tensor
    position_offset: int | torch.Tensor = 0
    attention: Mapping[str, Any] = field(default_factory=dict)
    answer_index: torch.Tensor | None = None
    target_ids: torch.Tensor | None = None
    target_mask: torch.Tensor | None = None


def place_prompts(embeds: torch.Tensor, prompts: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
    """`embeds` with row `prompts[s]` wherever `slots` holds s >= 0 (-1 keeps the token's embedding)."""
    # F.embedding, not prompts[slots]: indexing's backward sums a row's gradients in a thread-dependent order,
    # so two runs of one seed drifted apart in the last bits; the embedding backward sums in a fixed order.
    return torch.where(slots[..., None] >= 0, F.embedding(slots.clamp(min=0), prompts), embeds)


class FamilyAdapter:
    family: ClassVar[Family]
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
    def hidden_states(cls, model: PreTrainedModel, inputs: PromptedInput,
                      cache: DynamicCache | None = None) -> torch.Tensor:
        """Final hidden states of the body (no head); `cache`, if given, is filled for generation.

        Position ids count real tokens only (so padding never shifts them), starting at the input's
        `position_offset` (as PEFT places them after a prefix).
        """
        mask = inputs.attention_mask
        positions = (mask.cumsum(-1) - 1).clamp(min=0) + inputs.position_offset + cls.position_start(model)
        caching = {"cache": cache, "use_cache": True} if cache is not None else {"use_cache": False}
        output = model.base_model(inputs_embeds=inputs.embeds, attention_mask=mask, position_ids=positions,
                                  **caching, **inputs.attention)
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

    @classmethod
    def row_logits(cls, model: PreTrainedModel, hidden: torch.Tensor, token_ids: torch.Tensor) -> torch.Tensor:
        return cls.vocab_logits(model, hidden)[..., token_ids].float()

    @classmethod
    def vocab_log_probs(cls, model: PreTrainedModel, hidden: torch.Tensor) -> torch.Tensor:
        return torch.log_softmax(cls.vocab_logits(model, hidden).float(), dim=-1)

    @staticmethod
    def vocab_logits(model: PreTrainedModel, hidden: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    # -- generation (causal and seq2seq families) --------------------------------------------------
    generates = False

    @classmethod
    def target_hidden(cls, model: PreTrainedModel, inputs: PromptedInput) -> torch.Tensor:
        """(batch, target_len, d): teacher-forced hidden states, the j-th predicting target token j."""
        raise NotImplementedError

    @classmethod
    def start_generation(cls, model: PreTrainedModel, inputs: PromptedInput
                         ) -> tuple[torch.Tensor, GenerationSession]:
        """Read the prompted source once (filling the KV cache); return the first step's logits and a
        session that decodes further tokens one step at a time."""
        raise NotImplementedError

    @classmethod
    def score_and_start_generation(cls, model: PreTrainedModel, inputs: PromptedInput
                                   ) -> tuple[torch.Tensor, torch.Tensor, GenerationSession]:
        """Evaluation's two reads of the source in one: (`target_hidden`'s teacher-forced states, the first
        step's logits, a decoding session). Families override it to read the source once."""
        hidden = cls.target_hidden(model, inputs)
        first, session = cls.start_generation(model, inputs)
        return hidden, first, session


class GenerationSession:
    """Cached decoding state of one batch; the method's attention kwargs reach every step."""

    def __init__(self, model: PreTrainedModel, adapter: type[FamilyAdapter],
                 attention_kwargs: Mapping[str, Any]) -> None:
        self.model, self.adapter, self.attention_kwargs = model, adapter, attention_kwargs
        self.cache: DynamicCache | EncoderDecoderCache | None = None
        self.rows: dict[str, torch.Tensor] = {}  # per-row tensors that follow beam reordering

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def repeat(self, times: int) -> None:
        self.cache.batch_repeat_interleave(times)
        self.rows = {k: v.repeat_interleave(times, dim=0) for k, v in self.rows.items()}

    def select(self, rows: torch.Tensor) -> None:
        self.cache.reorder_cache(rows)
        self.rows = {k: v.index_select(0, rows) for k, v in self.rows.items()}


class CausalSession(GenerationSession):
    """Rows keep their own mask (pads may sit between source and generated tokens) and next position."""

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        mask = torch.cat([self.rows["attention_mask"], torch.ones_like(tokens)[:, None]], dim=1)
        positions = self.rows["next_position"]
        output = self.model.base_model(inputs_embeds=self.adapter.embed(self.model, tokens[:, None]),
                                       attention_mask=mask, position_ids=positions[:, None],
                                       cache=self.cache, use_cache=True, **self.attention_kwargs)
        self.rows = {"attention_mask": mask, "next_position": positions + 1}
        return self.adapter.vocab_logits(self.model, output.last_hidden_state[:, -1])


class Seq2SeqSession(GenerationSession):
    """The encoder ran once; each step runs one decoder token against the cached encoder states."""

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        output = self.model.get_decoder()(
            input_ids=tokens[:, None], encoder_hidden_states=self.rows["encoded"],
            encoder_attention_mask=self.rows["encoder_mask"], cache=self.cache, use_cache=True,
            **self.attention_kwargs)
        return self.adapter.vocab_logits(self.model, output.last_hidden_state[:, -1])


class CausalLMAdapter(FamilyAdapter):
    """Decoder-only LMs (Llama, Qwen, GPT-2, SmolLM2): the answer is the next token after the template."""

    family = Family.CAUSAL_LM
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
    def vocab_logits(model: PreTrainedModel, hidden: torch.Tensor) -> torch.Tensor:
        return model.get_output_embeddings()(hidden)

    generates = True

    @classmethod
    def target_hidden(cls, model: PreTrainedModel, inputs: PromptedInput) -> torch.Tensor:
        """The target follows the padded source; masks and position ids skip any pads in between.

        The last target token is never an input (nothing is predicted from it), so it is left out.
        """
        target_ids = inputs.target_ids
        source_len, target_len = inputs.embeds.shape[1], target_ids.shape[1]
        embeds = torch.cat([inputs.embeds, cls.embed(model, target_ids[:, :-1]).to(inputs.embeds.dtype)], dim=1)
        mask = torch.cat([inputs.attention_mask, inputs.target_mask[:, :-1].to(inputs.attention_mask.dtype)], dim=1)
        hidden = cls.hidden_states(model, replace(inputs, embeds=embeds, attention_mask=mask))
        steps = torch.arange(target_len, device=hidden.device)
        positions = torch.where(steps == 0, inputs.answer_index[:, None], source_len - 1 + steps)
        return hidden[torch.arange(len(hidden), device=hidden.device)[:, None], positions]

    @classmethod
    def _prefill(cls, model: PreTrainedModel, inputs: PromptedInput) -> tuple[torch.Tensor, CausalSession]:
        """The source read once into a KV cache: (the hidden state at the answer position, the session)."""
        session = CausalSession(model, cls, inputs.attention)
        session.cache = DynamicCache(config=model.config)
        hidden = cls.hidden_states(model, inputs, cache=session.cache)
        mask, answer_index = inputs.attention_mask, inputs.answer_index
        session.rows = {"attention_mask": mask,
                        "next_position": (mask.sum(-1, keepdim=True) + inputs.position_offset)[:, 0]}
        return hidden[torch.arange(len(answer_index), device=answer_index.device), answer_index], session

    @classmethod
    def start_generation(cls, model: PreTrainedModel, inputs: PromptedInput
                         ) -> tuple[torch.Tensor, GenerationSession]:
        last, session = cls._prefill(model, inputs)
        return cls.vocab_logits(model, last), session

    @classmethod
    def score_and_start_generation(cls, model: PreTrainedModel, inputs: PromptedInput
                                   ) -> tuple[torch.Tensor, torch.Tensor, GenerationSession]:
        """The source is read once: the prefill's cache also serves the teacher-forced target tokens, which are
        then cropped off so decoding starts from the source alone."""
        last, session = cls._prefill(model, inputs)
        states = [last[:, None]]
        target_ids = inputs.target_ids
        fed = target_ids.shape[1] - 1  # the last target token is never an input
        if fed:
            mask = torch.cat([inputs.attention_mask, inputs.target_mask[:, :-1].to(inputs.attention_mask.dtype)],
                             dim=1)
            positions = session.rows["next_position"][:, None] + torch.arange(fed, device=target_ids.device)
            output = model.base_model(inputs_embeds=cls.embed(model, target_ids[:, :-1]).to(inputs.embeds.dtype),
                                      attention_mask=mask, position_ids=positions, cache=session.cache,
                                      use_cache=True, **inputs.attention)
            states.append(output.last_hidden_state)
            session.cache.crop(-fed)
        return torch.cat(states, dim=1), cls.vocab_logits(model, last), session


class MaskedLMAdapter(FamilyAdapter):
    """BERT, RoBERTa: the answer is the template's mask token, scored through the MLM head.

    The MLM head transforms the hidden state before its output layer, so the head runs on the
    answer positions only (never on every position).
    """

    family = Family.MASKED_LM

    @staticmethod
    def _head(model: PreTrainedModel) -> torch.nn.Module:
        for name in ("cls", "lm_head", "generator_lm_head", "predictions"):
            if hasattr(model, name):
                return getattr(model, name)
        raise ConfigError("backbone.family", Family.MASKED_LM, f"{type(model).__name__} has no known MLM head")

    @staticmethod
    def answer_token_id(tokenizer: PreTrainedTokenizerBase) -> int | None:
        if tokenizer.mask_token_id is None:
            raise ConfigError("backbone.family", Family.MASKED_LM, "the tokenizer has no mask token")
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
    def vocab_logits(cls, model: PreTrainedModel, hidden: torch.Tensor) -> torch.Tensor:
        return cls._head(model)(hidden)


class EncoderHeadAdapter(FamilyAdapter):
    """Encoders with no LM head (all-MiniLM, say): a trainable linear head on the pooled output."""

    family = Family.ENCODER_HEAD
    needs_head = True


class Seq2SeqAdapter(FamilyAdapter):
    """T5, BART: input-level prompts go on the encoder input; the answer is the decoder's first step
    (Lester et al.'s T5 setting). Prefixes go into encoder self-, decoder self- and cross-attention."""

    family = Family.SEQ2SEQ
    supports_left_padding = False  # BART's learned positions are not mask-aware

    @classmethod
    def hidden_states(cls, model: PreTrainedModel, inputs: PromptedInput,
                      cache: DynamicCache | None = None) -> torch.Tensor:
        """The decoder's first hidden state (batch, 1, d), after the encoder read the prompted input."""
        encoded = cls._encode(model, inputs)
        start = cls._start_tokens(model, len(inputs.embeds), inputs.embeds.device)
        decoder = model.get_decoder()
        return decoder(input_ids=start, encoder_hidden_states=encoded, encoder_attention_mask=inputs.attention_mask,
                       use_cache=False, **inputs.attention).last_hidden_state

    @staticmethod
    def answer_hidden(hidden: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return hidden[:, 0]

    check_label_words = staticmethod(MaskedLMAdapter.check_label_words)  # one decoder step: single tokens

    @staticmethod
    def vocab_logits(model: PreTrainedModel, hidden: torch.Tensor) -> torch.Tensor:
        if model.config.model_type == "t5" and model.config.tie_word_embeddings:
            hidden = hidden * model.config.d_model**-0.5  # as T5ForConditionalGeneration does
        logits = model.get_output_embeddings()(hidden)
        bias = getattr(model, "final_logits_bias", None)  # BART
        return logits + bias if bias is not None else logits

    generates = True

    @staticmethod
    def _encode(model: PreTrainedModel, inputs: PromptedInput) -> torch.Tensor:
        """The encoder's output for the prompted input (prefixes reach its self-attention)."""
        return model.get_encoder()(inputs_embeds=inputs.embeds, attention_mask=inputs.attention_mask,
                                   **inputs.attention).last_hidden_state

    @staticmethod
    def _start_tokens(model: PreTrainedModel, rows: int, device: torch.device) -> torch.Tensor:
        return torch.full((rows, 1), model.config.decoder_start_token_id, dtype=torch.long, device=device)

    @classmethod
    def target_hidden(cls, model: PreTrainedModel, inputs: PromptedInput) -> torch.Tensor:
        """The decoder reads the start token and the target shifted right (targets are right-padded)."""
        return cls._teacher_forced(model, cls._encode(model, inputs), inputs)

    @classmethod
    def _teacher_forced(cls, model: PreTrainedModel, encoded: torch.Tensor, inputs: PromptedInput) -> torch.Tensor:
        target_ids = inputs.target_ids
        start = cls._start_tokens(model, len(target_ids), target_ids.device)
        decoder_ids = torch.cat([start, target_ids[:, :-1]], dim=1)
        decoder_mask = torch.cat([torch.ones_like(start), inputs.target_mask[:, :-1].long()], dim=1)
        return model.get_decoder()(input_ids=decoder_ids, attention_mask=decoder_mask, encoder_hidden_states=encoded,
                                   encoder_attention_mask=inputs.attention_mask, use_cache=False,
                                   **inputs.attention).last_hidden_state

    @classmethod
    def _session(cls, model: PreTrainedModel, encoded: torch.Tensor, inputs: PromptedInput
                 ) -> tuple[torch.Tensor, GenerationSession]:
        """(the first step's logits, a decoding session) over an encoded source."""
        session = Seq2SeqSession(model, cls, inputs.attention)
        session.cache = EncoderDecoderCache(DynamicCache(), DynamicCache())
        session.rows = {"encoded": encoded, "encoder_mask": inputs.attention_mask}
        start = cls._start_tokens(model, len(encoded), encoded.device)
        return session.step(start[:, 0]), session

    @classmethod
    def start_generation(cls, model: PreTrainedModel, inputs: PromptedInput
                         ) -> tuple[torch.Tensor, GenerationSession]:
        return cls._session(model, cls._encode(model, inputs), inputs)

    @classmethod
    def score_and_start_generation(cls, model: PreTrainedModel, inputs: PromptedInput
                                   ) -> tuple[torch.Tensor, torch.Tensor, GenerationSession]:
        """The encoder reads the source once, for the teacher-forced decoder pass and for decoding."""
        encoded = cls._encode(model, inputs)
        hidden = cls._teacher_forced(model, encoded, inputs)
        first, session = cls._session(model, encoded, inputs)
        return hidden, first, session


FAMILY_ADAPTERS: dict[Family, type[FamilyAdapter]] = {
    adapter.family: adapter for adapter in (Seq2SeqAdapter, CausalLMAdapter, MaskedLMAdapter, EncoderHeadAdapter)}
