"""Adaption prompts (LLaMA-Adapter, Zhang et al. 2023, arXiv v1 section 3.2: "zero-init attention").

Each of the top `adapter_layers` attention layers gets its own `num_virtual_tokens` learnable prompt vectors in
the hidden space. The layer projects them through its own key/value projections (no position encoding), every
query attends to them in a separate softmax, and a zero-initialised gate scales that term before it joins the
attention output (ahead of the output projection), so training starts from the unprompted model (eqs. 5-8):

    out_l = softmax(q K^T / sqrt(d)) V + g_l * softmax(q (W_k P_l)^T / sqrt(d)) (W_v P_l)

`gate=layer` (one scalar per layer) is PEFT's ADAPTION_PROMPT on Llama/Mistral; `gate=head` is the paper's gate
per head (section 3.2; its release trains tanh(g)). The term enters through the attention wrapper's generic
`AttentionAddend` kwarg, never through `past_key_values`, so it works under gradient checkpointing and with the
KV cache while decoding. The trained tensors are the folded form: the prompts and the gates, nothing to compute
away.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from softprompt.backbones.attention_prefix import (
    ADDEND_KWARG,
    AttentionAddend,
    UnreachableAttentionError,
    attention_modules,
    enable_prefix_injection,
    projects_keys_values,
)
from softprompt.backbones.families import Family
from softprompt.config.typed import at_least
from softprompt.errors import ConfigError
from softprompt.methods.base import Injection, NotRepresentable, PeftForm, SoftPromptMethod
from softprompt.methods.config import PromptConfig
from softprompt.methods.init import RANDOM_INITS, InitContext, initial_embeddings, random_values
from softprompt.methods.inspection import input_level_report

FAMILY = Family.CAUSAL_LM  # the paper's and PEFT's setting: decoder-only self-attention
ROLE = "self"


@dataclass(frozen=True)
class AdaptionPromptConfig(PromptConfig):
    """Gated adaption prompts in the top `adapter_layers` layers (null: every layer); `gate`: one per layer or
    one per head."""

    slots: Literal["none"]
    adapter_layers: int | None = field(metadata=at_least(1))
    gate: Literal["layer", "head"]


class AdaptionPrompt(SoftPromptMethod):
    """LLaMA-Adapter's gated adaption prompts: per layer, prompts (P, hidden) and a zero-initialised gate."""

    Config = AdaptionPromptConfig
    injection = Injection.ATTENTION

    def __init__(self, config: AdaptionPromptConfig, *, init_context: InitContext | None = None, **common) -> None:
        super().__init__(config, **common)
        adapter_layers = config.adapter_layers
        architecture = type(self.backbone).__name__
        if self.adapter.family != FAMILY:
            raise ConfigError("backbone.family", self.adapter.family, f"{self.method_name} needs a {FAMILY} backbone "
                              f"({architecture} is not): its prompts enter decoder-only self-attention, as in the "
                              "paper and PEFT; use prefix_tuning or p_tuning_v2 on this backbone")
        enable_prefix_injection(self.backbone)
        modules = {layer: m for (role, layer), m in attention_modules(self.backbone).items() if role == ROLE}
        total = len(modules)
        count = total if adapter_layers is None else adapter_layers
        if count > total:
            raise ConfigError("method.adapter_layers", adapter_layers, f"{architecture} has {total} attention layers "
                              f"(null: every layer)")
        self.layers = sorted(modules)[total - count:]
        unreachable = [layer for layer in self.layers if not projects_keys_values(modules[layer])]
        if unreachable:
            raise UnreachableAttentionError(
                f"{self.method_name} cannot serve {architecture}: attention layers {unreachable} have no separate "
                "k_proj/v_proj (nor GPT-2's c_attn) to project the prompts with; use prefix_tuning or p_tuning_v2")
        text = self.backbone.config.get_text_config()
        self.num_virtual_tokens = config.num_virtual_tokens
        self.init = config.init
        self.gate_kind = config.gate
        self.prompt_shape = (count, config.num_virtual_tokens, text.hidden_size)
        self.gate_shape = (count, text.num_attention_heads if config.gate == "head" else 1)
        # Trainable tensors stay fp32 whatever the backbone dtype; the attention wrapper casts them. Without an
        # init, the prompt comes from `load_folded_state` (a trained prompt's).
        self.prompt = nn.Parameter(self._initial_prompt(config.init, init_context) if init_context is not None
                                   else torch.zeros(self.prompt_shape))
        self.gate = nn.Parameter(torch.zeros(self.gate_shape))  # zero-init: the frozen model's outputs

    @classmethod
    def peft_form(cls, config: AdaptionPromptConfig, family: Family) -> PeftForm:
        """PEFT's ADAPTION_PROMPT trains the same structure (one gate per layer; it gives our logits on Llama and
        Mistral), so the benchmark trains it beside ours; but it is no prompt-learning adapter (it saves an
        adaption_prompt and an adaption_gate under each wrapped attention module's path), so nothing is exported.
        With a gate per head PEFT has no counterpart."""
        if config.gate != "layer":
            raise NotRepresentable(f"{config.name} with method.gate={config.gate} has no PEFT counterpart: PEFT's "
                                   "ADAPTION_PROMPT has one gate per layer (method.gate=layer)")
        refusal = (f"{config.name} has no PEFT export: PEFT's ADAPTION_PROMPT is not a prompt-learning adapter (it "
                   "stores adaption_prompt and adaption_gate per wrapped attention module), and it matches ours only "
                   "on Llama/Mistral with method.gate=layer")
        return PeftForm("ADAPTION_PROMPT", "prompt", {}, {}, sized_by={"adapter_layers": ("prompt", 0)},
                        length_field="adapter_len", export_refusal=refusal)

    @classmethod
    def mixed_batch_kind(cls) -> Injection | None:
        """None: mixed batches carry key/value prefixes per row, not gated adaption prompts."""
        return None

    def inspect(self, tokenizer: PreTrainedTokenizerBase, top_k: int) -> list[str]:
        """Per layer: its gate(s) and the prompt's norms and nearest vocabulary tokens (the prompts live in the
        hidden space the layer's key/value projections read, where the input embeddings also live)."""
        state = self.folded_state()
        embeddings = self.backbone.get_input_embeddings().weight.detach()
        total = len(self.layers) + self.layers[0]
        lines = [f"as gated adaption prompts in the top {len(self.layers)} of {total} attention layers "
                 f"(a gate per {self.gate_kind}; a zero gate leaves its layer as the frozen model's)"]
        for index, layer in enumerate(self.layers):
            report = input_level_report(state["prompt"][index], embeddings, tokenizer, top_k)
            gates = ", ".join(f"{g:+.4f}" for g in state["gate"][index].tolist())
            norm = sum(report.norms) / len(report.norms)
            lines.append(f"layer {layer}: gate {gates} | prompt L2 norm mean {norm:.4f} (vocabulary "
                         f"{report.vocab_mean_norm:.4f})")
            lines += [f"  virtual token {k}: nearest by cosine: "
                      + ", ".join(f"{text!r} (id {i}) {cos:.4f}" for i, text, cos in nearest)
                      for k, nearest in enumerate(report.nearest)]
        return lines

    def _initial_prompt(self, init: str, ctx: InitContext) -> torch.Tensor:
        """Random values (PEFT and the authors' release: standard normal), or each layer's own draw of real words'
        embeddings."""
        if init in RANDOM_INITS:
            return random_values(init, self.prompt_shape, ctx)
        return torch.stack([initial_embeddings(init, self.num_virtual_tokens, ctx) for _ in self.layers])

    def attention_kwargs(self) -> dict[str, AttentionAddend]:
        return {ADDEND_KWARG: AttentionAddend(
            states={(ROLE, layer): self.prompt[i] for i, layer in enumerate(self.layers)},
            gates={(ROLE, layer): self.gate[i] for i, layer in enumerate(self.layers)})}

    # -- folding: the prompts and gates are already the folded form -------------------------------
    def folded_shapes(self) -> dict[str, tuple[int, ...]]:
        return {"prompt": self.prompt_shape, "gate": self.gate_shape}

    def own_folded_state(self) -> dict[str, torch.Tensor]:
        return {"prompt": self.prompt, "gate": self.gate}

    def set_folded(self, tensors: dict[str, torch.Tensor]) -> None:
        self.prompt, self.gate = nn.Parameter(tensors["prompt"]), nn.Parameter(tensors["gate"])
