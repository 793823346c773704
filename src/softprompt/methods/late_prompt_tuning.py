"""Late prompt tuning (Liu et al., Findings of EMNLP 2022, "Late Prompt Tuning: A Late Prompt Could Be Better
Than Many Prompts").

The prompt enters at an intermediate layer k (`insert_layer`; null: the middle layer, as the authors' scripts:
12 of RoBERTa-large's 24, 18 of GPT2-large's 36) instead of the input, so layers below k never see it
(section 3, "Late Prompt Tuning"). The paper's main version, implemented here as `generator: npg`, makes the
prompt instance-aware: a naive prompt generator (NPG, section 3, Figure 3) maps one hidden state entering layer
k to n prompt vectors,
    prompt = Dropout(W_up ReLU(W_down h)), W_down: d -> `generator_hidden`, W_up: -> n x d,
as the authors' code does (github xyltt/LPT, `PromptGeneratorWithNaivePromptGenerator`): h is the last input
token's state on a decoder (GPT-2) and the first token's (<s>) on an encoder (RoBERTa); here the answer position's
on a decoder (the template's last token, the same for every verbalizer word scored) and the first input token's
([CLS], <s>) on an encoder. `generator: none` is their baseline, one learned prompt inserted at layer k.
The generator starts from PyTorch's default (Kaiming-uniform) Linear init, so `init` must be random_uniform
(or from_artifact); the plain prompt takes any init.

How it enters, exactly: the input carries `[P:n]` front slots (as prompt tuning's), but the backbone reads an
attention mask with the slots left out, so below layer k every real token computes what it computes without
the prompt, position ids included (the slots share the position of the token before them: BOS's 0, as the
prompt has no position of its own in the authors' GPT-2). A forward pre-hook on layer k writes the prompt
into the slot rows of its input; pre-hooks on the self-attention modules of layers >= k add the slot columns
back to their mask (causally on a decoder). The hooks stay on the backbone, inert without this method's forward
keyword argument, which reaches every layer and attention call (and the recomputed call under gradient
checkpointing). Generation keeps the slots in its KV cache; decoding steps see them from layer k on.

Encoder-decoders are refused: the decoder's cross-attention would need the prompt too, and BART's learned
encoder positions count the slots. The artifact holds the generator (or the plain prompt) as trained: an
instance-aware prompt has no folded form. PEFT and mixed batches cannot reproduce it and refuse in one line.

Section and equation numbers follow secondary sources; they were not checked against the paper's own text
(not reachable offline); the behaviour was checked against the authors' code.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import torch
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase
from transformers.modeling_layers import GradientCheckpointingLayer

from softprompt.backbones.attention_prefix import ROLE_ATTRIBUTE, attention_layers
from softprompt.backbones.families import Family, PromptedInput
from softprompt.config.precision import full_precision
from softprompt.config.typed import at_least, bounded
from softprompt.errors import ConfigError, SoftPromptError
from softprompt.methods.base import Injection, NotRepresentable, PeftForm, SoftPromptMethod
from softprompt.methods.config import PromptConfig
from softprompt.methods.init import ARTIFACT_INIT, InitContext, initial_embeddings
from softprompt.objectives.scoring import Batch

LATE_KWARG = "softprompt_late"  # the forward keyword argument carrying one batch's LateInsertion
HOOKED_ATTRIBUTE = "softprompt_late_hooks"  # set on a backbone once its hooks are on
GENERATOR_INITS = ("random_uniform", ARTIFACT_INIT)


@dataclass(frozen=True)
class LatePromptConfig(PromptConfig):
    """The prompt's length and init, where it enters, and the prompt generator."""

    slots: Literal["front"]
    insert_layer: int | None = field(metadata=at_least(0))  # k; null: the middle layer (layers // 2)
    generator: Literal["npg", "none"]
    generator_hidden: int = field(metadata=at_least(1))
    generator_dropout: float = field(metadata=bounded(at_least=0.0, below=1.0))

    def validate(self) -> None:
        super().validate()
        if self.generator == "npg" and self.init not in GENERATOR_INITS:
            raise ConfigError("method.init", self.init, f"generator=npg starts from PyTorch's Linear init; allowed: "
                              f"{', '.join(GENERATOR_INITS)} (the other inits are for generator=none's plain prompt)")


class PromptGenerator(nn.Module):
    """LPT's naive prompt generator: (batch, d) hidden states -> (batch, n, d) prompts."""

    def __init__(self, dim: int, hidden: int, num_tokens: int, dropout: float) -> None:
        super().__init__()
        self.num_tokens = num_tokens
        self.proj_down = nn.Linear(dim, hidden)
        self.proj_up = nn.Linear(hidden, num_tokens * dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        prompt = self.dropout(self.proj_up(torch.relu(self.proj_down(hidden))))
        return prompt.view(len(hidden), self.num_tokens, -1)


@dataclass
class LateInsertion:
    """One prompted read of a batch: where the slots are and how the prompt is made from layer k's input."""

    layer: int
    slots: torch.Tensor  # (batch, source length) slot ids, -1 for tokens
    prompt: Callable[[torch.Tensor], torch.Tensor]  # layer k's input (batch, length, d) -> (batch, n, d)
    inserted: bool = False  # the prompt entered (once: decoding steps and cached reads skip it)

    def insert(self, hidden: torch.Tensor) -> torch.Tensor:
        slots = nn.functional.pad(self.slots, (0, hidden.shape[1] - self.slots.shape[1]), value=-1)
        prompt = self.prompt(hidden).to(hidden.dtype)
        rows = prompt[torch.arange(len(hidden), device=hidden.device)[:, None], slots.clamp(min=0)]
        self.inserted = True
        return torch.where(slots[..., None] >= 0, rows, hidden)

    def unhide(self, mask: torch.Tensor | None, module: nn.Module, queries: int, keys: int) -> torch.Tensor:
        """`mask` with the slot columns visible (causally on a causal module); bool or additive, as given."""
        device = self.slots.device
        slot_keys = nn.functional.pad(self.slots >= 0, (0, max(keys - self.slots.shape[1], 0)))[:, :keys]
        allowed = torch.ones(queries, keys, dtype=torch.bool, device=device)
        if getattr(module, "is_causal", False):
            query_at = torch.arange(queries, device=device)[:, None] + keys - queries
            allowed = torch.arange(keys, device=device)[None] <= query_at
            window = getattr(module, "sliding_window", None)
            if window:
                allowed &= query_at - torch.arange(keys, device=device)[None] < window
        add = slot_keys[:, None, None, :] & allowed
        if mask is None:  # nothing hidden: the plain causal (or full) pattern
            return allowed[None, None] | add
        if mask.dtype == torch.bool:
            return mask | add
        return torch.where(add, torch.zeros((), dtype=mask.dtype, device=mask.device), mask)


def _layer_hook(index: int, module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
    """Layer `index`'s pre-hook: at the insertion layer, the prompt replaces the slot rows of its input."""
    state = kwargs.get(LATE_KWARG)
    if not isinstance(state, LateInsertion) or state.inserted or index != state.layer:
        return None
    if args:
        return (state.insert(args[0]), *args[1:]), kwargs
    return args, {**kwargs, "hidden_states": state.insert(kwargs["hidden_states"])}


def _attention_hook(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
    """A self-attention module's pre-hook: from the insertion layer on, the slot columns are visible."""
    state = kwargs.get(LATE_KWARG)
    if not isinstance(state, LateInsertion) or module.layer_idx < state.layer:
        return None
    key = next((k for k in ("attention_mask", "mask") if k in kwargs), None)
    if key is None:
        raise SoftPromptError(f"late prompt tuning cannot reach the attention mask of {type(module).__name__} "
                              f"(its keyword arguments: {', '.join(sorted(kwargs))})")
    hidden = args[0] if args else kwargs["hidden_states"]
    mask, queries = kwargs[key], hidden.shape[1]
    cache = kwargs.get("cache")
    keys = mask.shape[-1] if mask is not None else queries + (cache.get_seq_length(module.layer_idx) if cache else 0)
    return args, {**kwargs, key: state.unhide(mask, module, queries, keys)}


def stack_layers(model: PreTrainedModel, method: str) -> list[nn.Module]:
    """The transformer layers of a single-stack backbone, in order (each the layer around attention layer i)."""
    attention_layers(model)  # tags each attention module with its role
    modules = dict(model.named_modules())
    layers: dict[int, nn.Module] = {}
    for name, module in modules.items():
        if getattr(module, ROLE_ATTRIBUTE, None) == "self":
            parents = [modules[p] for p in (name.rsplit(".", depth)[0] for depth in range(1, name.count(".") + 1))]
            layer = next((p for p in parents if isinstance(p, GradientCheckpointingLayer)), None)
            if layer is None:
                raise ConfigError("method", method, f"{type(model).__name__}'s attention layer {name} sits in no "
                                  "transformer layer module the prompt could enter")
            layers[module.layer_idx] = layer
    return [layers[i] for i in sorted(layers)]


def install_hooks(model: PreTrainedModel, layers: list[nn.Module]) -> None:
    """The pre-hooks on every layer and self-attention module (once per backbone; inert without LATE_KWARG)."""
    if getattr(model, HOOKED_ATTRIBUTE, False):
        return
    for index, layer in enumerate(layers):
        layer.register_forward_pre_hook(functools.partial(_layer_hook, index), with_kwargs=True)
    for module in model.modules():
        if getattr(module, ROLE_ATTRIBUTE, None) == "self":
            module.register_forward_pre_hook(_attention_hook, with_kwargs=True)
    setattr(model, HOOKED_ATTRIBUTE, True)


class LatePrompt(SoftPromptMethod):
    """A prompt (instance-aware from a generator, or plain) inserted before layer k of a frozen backbone."""

    Config = LatePromptConfig
    injection = Injection.INPUT  # the slots sit in the input (as prompt tuning's); the prompt fills them at layer k
    folded_config: ClassVar[Mapping[str, Any]] = {}  # nothing folds away: the generator is the trained prompt
    folded_away: ClassVar[tuple[str, ...]] = ()

    def __init__(self, config: LatePromptConfig, *, init_context: InitContext | None = None, **common) -> None:
        super().__init__(config, **common)
        if self.adapter.family == Family.SEQ2SEQ:
            raise ConfigError("method", self.method_name, "an encoder-decoder backbone is not served: the decoder's "
                              "cross-attention would need the late prompt too; use a causal_lm or encoder backbone")
        n = self.num_virtual_tokens = config.num_virtual_tokens
        self.init = config.init
        self.layers = stack_layers(self.backbone, self.method_name)
        count = len(self.layers)
        self.insert_layer = count // 2 if config.insert_layer is None else config.insert_layer
        if not 0 <= self.insert_layer < count:
            raise ConfigError("method.insert_layer", config.insert_layer, f"the backbone has {count} layers: "
                              f"allowed 0 to {count - 1} (null: the middle one, {count // 2})")
        install_hooks(self.backbone, self.layers)
        dim = self.backbone.get_input_embeddings().embedding_dim
        self.causal = self.adapter.family == Family.CAUSAL_LM  # the summary token: answer position, else first token
        if config.generator == "npg":
            self.generator = PromptGenerator(dim, config.generator_hidden, n, config.generator_dropout)
        else:  # without an init, the prompt comes from `load_folded_state` (a trained prompt's)
            self.generator = None
            self.prompt = nn.Parameter(initial_embeddings(config.init, n, init_context) if init_context is not None
                                       else torch.zeros(n, dim))

    @classmethod
    def peft_form(cls, config: LatePromptConfig, family: Family) -> PeftForm:
        raise NotRepresentable(f"{config.name} inserts its prompt at an intermediate layer (instance-aware with "
                               "generator=npg); PEFT's prompt types enter at the input or as key/value prefixes")

    @classmethod
    def mixed_batch_kind(cls) -> Injection | None:
        """None: the prompt enters at layer k through hooks that a mixed batch does not reproduce."""
        return None

    # -- the prompt ----------------------------------------------------------------------------------
    def late_prompt(self, hidden: torch.Tensor, summary: torch.Tensor) -> torch.Tensor:
        """(batch, n, d), fp32: the plain prompt, or the generator's output from each row's summary state."""
        if self.generator is None:
            return self.prompt.expand(len(hidden), -1, -1)
        rows = hidden[torch.arange(len(hidden), device=hidden.device), summary]
        with full_precision(rows):
            return self.generator(rows.float())

    def _insertion(self, batch: Batch) -> tuple[Batch, dict[str, LateInsertion]]:
        """The batch as the backbone reads it (slots left out of the mask) and the forward keyword argument."""
        own = (batch["attention_mask"] > 0) & (batch["slot_ids"] < 0)
        first = own.long().argmax(-1)
        summary = batch["answer_index"] if self.causal else first
        state = LateInsertion(self.insert_layer, batch["slot_ids"], lambda hidden: self.late_prompt(hidden, summary))
        return {**batch, "attention_mask": own.to(batch["attention_mask"].dtype)}, {LATE_KWARG: state}

    # -- the prompt enters at layer k, through the hooks installed above ----------------------------------------
    def prompted(self, batch: Batch) -> PromptedInput:
        """The batch as the backbone reads it: slots left out of the mask, the prompt's insertion as the forward
        keyword argument that reaches layer k."""
        plain, kwargs = self._insertion(batch)
        return PromptedInput(self.embed_inputs(plain), plain["attention_mask"], self.position_offset, kwargs,
                             plain.get("answer_index"), plain.get("target_ids"), plain.get("target_mask"))

    def check_entered(self, inputs: PromptedInput) -> None:
        if not inputs.attention[LATE_KWARG].inserted:
            raise SoftPromptError("the late prompt never entered the backbone: its insertion layer did not run")

    # -- folding: the trained tensors as they are -----------------------------------------------------------
    def _own_state(self) -> dict[str, nn.Parameter | torch.Tensor]:
        if self.generator is None:
            return {"prompt": self.prompt}
        return {f"generator.{k}": v for k, v in self.generator.state_dict(keep_vars=True).items()}

    def folded_shapes(self) -> dict[str, tuple[int, ...]]:
        return {key: tuple(tensor.shape) for key, tensor in self._own_state().items()}

    def own_folded_state(self) -> dict[str, torch.Tensor]:
        return self._own_state()

    def set_folded(self, tensors: dict[str, torch.Tensor]) -> None:
        if self.generator is None:
            self.prompt = nn.Parameter(tensors["prompt"])
        else:
            self.generator.load_state_dict({k.removeprefix("generator."): v for k, v in tensors.items()})

    def inspect(self, tokenizer: PreTrainedTokenizerBase, top_k: int) -> list[str]:
        """Where the prompt enters; the plain prompt's norms and pairwise cosines, or the generator's sizes (its
        prompt depends on the input, so there is no fixed prompt to show)."""
        where = f"inserted before layer {self.insert_layer} of {len(self.layers)}, in that layer's hidden space"
        if self.generator is None:
            prompt = self.prompt.detach().float()
            unit = nn.functional.normalize(prompt, dim=-1)
            lines = [f"virtual token {i}: L2 norm {float(norm):.4f}" for i, norm in enumerate(prompt.norm(dim=-1))]
            cosines = (unit @ unit.T).tolist()
            return [f"{where} (a plain prompt; nearest vocabulary tokens do not apply past the input)", *lines,
                    "pairwise cosine similarity between virtual tokens:",
                    *("      " + "".join(f"{c:>8.4f}" for c in row) for row in cosines)]
        down, up = self.generator.proj_down.weight, self.generator.proj_up.weight
        token = "the answer position's" if self.causal else "the first token's"
        return [f"{where}, generated per input from {token} hidden state entering that layer",
                f"prompt generator: Linear({down.shape[1]}, {down.shape[0]}), ReLU, Linear({up.shape[1]}, "
                f"{up.shape[0]}) = {self.num_virtual_tokens} x {down.shape[1]}; weight L2 norms "
                f"{float(down.norm()):.4f} (down) and {float(up.norm()):.4f} (up)",
                "an instance-aware prompt has no fixed vectors to compare with the vocabulary"]
