"""The method contract: a plain `nn.Module` holding a frozen backbone and a method's trainable part.

A method subclass takes its typed config as it is (`cls(config, backbone=..., objective=...)`), adds its
trainable tensors and how they enter the frozen backbone (`embed_inputs` for input-level methods,
`attention_kwargs` for attention-level ones), how they fold (`folded_shapes` and `set_folded`), and declares
what it is, once (see "what the method is" below): its injection point, folded form, PEFT form, mixed-batch kind
and what inspection shows. Artifacts, PEFT interop, mixed batches, inspection and the benchmark read these
declarations and never name a method. The objective (loss, metrics, predictions) is the task side; the training
loop, optimizer, backbone fingerprints and checkpoint hooks wrap a method in `softprompt.training.module`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, ClassVar

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from softprompt.backbones import Backbone
from softprompt.backbones.checkpointing import checkpoint_in_any_mode
from softprompt.backbones.families import FAMILY_ADAPTERS, Family, PromptedInput
from softprompt.config.typed import parse
from softprompt.errors import SoftPromptError
from softprompt.methods.config import MethodConfig
from softprompt.methods.init import ARTIFACT_INIT
from softprompt.objectives.base import Objective
from softprompt.objectives.decoding import DecodingConfig, decode
from softprompt.objectives.scoring import Batch


class Injection(StrEnum):
    """Where a method's prompt enters the backbone."""

    INPUT = "input"  # embeddings at the template's slots: prompt_embeddings()
    ATTENTION = "attention"  # key/value prefixes in the attention layers: prefix_grid() and geometry
    NONE = "none"  # nothing enters (the hard prompt)


@dataclass(frozen=True)
class PeftForm:
    """How PEFT represents a method: the folded artifact (export and import) and the trainable structure
    (the benchmark's PEFT baseline)."""

    peft_type: str  # PEFT's PeftType name, e.g. PROMPT_TUNING
    tensor: str  # the folded tensor PEFT stores as `prompt_embeddings`
    options: Mapping[str, Any]  # PEFT config fields of the folded (inference) form
    training_options: Mapping[str, Any]  # PEFT config fields that train the same structure
    # Further folded tensors PEFT stores beside prompt_embeddings: our key -> PEFT's key.
    extra_tensors: Mapping[str, str] = field(default_factory=dict)
    # PEFT config fields read off the folded tensors' shapes: field -> (our key, dimension).
    sized_by: Mapping[str, tuple[str, int]] = field(default_factory=dict)
    task_ids: bool = False  # PEFT's forward takes each row's task (`task_ids`); a batch without them is task 0
    length_field: str = "num_virtual_tokens"  # PEFT's config field for the prompt length
    # Why PEFT's saved adapter cannot hold the folded form (export and import refused), though PEFT trains the
    # same structure (the benchmark's baseline); None: it can.
    export_refusal: str | None = None


class NotRepresentable(SoftPromptError):
    """PEFT (or another format) cannot represent this method or setting; the message says why."""


# The hooks through which a method's prompt enters a forward; a mixed batch reproduces them row by row.
INJECTION_HOOKS = ("embed_inputs", "attention_kwargs", "prompted", "check_entered", "hidden_states", "target_hidden",
                   "generate")

# Each method class by its own typed Config: `build_method` reads the class off a parsed config.
METHODS: dict[type[MethodConfig], type[SoftPromptMethod]] = {}


class SoftPromptMethod(nn.Module):
    """Frozen backbone + a method's trainable part; the objective's forward passes go through it."""

    # -- what the method is: declared once, read by artifacts, interop, mixed batches, inspection, benchmark ---
    Config: ClassVar[type[MethodConfig]] = MethodConfig  # the typed `method` config; its class owns it
    injection: ClassVar[Injection] = Injection.NONE
    trains = True  # False for methods without trainable tensors: fitting is skipped
    # The folded form's config values (the artifact, init=from_artifact): the reparameterisation is computed away.
    folded_config: ClassVar[Mapping[str, Any]] = {}
    folded_away: ClassVar[tuple[str, ...]] = ()  # the keys of folded_config that name a reparameterisation
    # The `method.init` values that start from a trained prompt of this method (`method.init_artifact`, a run's
    # prompt/ folder): training/artifact_init.py reads its tensors for them.
    artifact_inits: ClassVar[tuple[str, ...]] = (ARTIFACT_INIT,)
    # PEFT types whose foreign adapters are this class's folded form: peft_type -> softprompt-train overrides.
    peft_imports: ClassVar[Mapping[str, list[str]]] = {}
    num_virtual_tokens = 0
    position_offset = 0  # where real tokens' position ids start (the prefix length for prefix methods)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "Config" in vars(cls):
            METHODS[cls.Config] = cls

    def __init__(self, config: MethodConfig, *, backbone: Backbone, objective: Objective,
                 dropout: bool = False) -> None:
        super().__init__()
        self.config = config
        self.backbone = backbone.model
        self.adapter = FAMILY_ADAPTERS[backbone.family]
        self.objective = objective
        self.method_name = config.name
        self.backbone_dropout = dropout

    @classmethod
    def parse_config(cls, method: Mapping) -> MethodConfig:
        """The `method` group as this method's typed Config, every key checked (ConfigError, one line)."""
        return parse(cls.Config, method, "method", name=str(method.get("name")))

    @classmethod
    def folded(cls, config: MethodConfig, *, backbone: Backbone, objective: Objective,
               tensors: Mapping[str, torch.Tensor], dropout: bool = False) -> SoftPromptMethod:
        """The method holding a trained prompt's folded tensors (an artifact's): built without an init (nothing is
        drawn for the tensors), then loaded."""
        method = cls(config, backbone=backbone, objective=objective, dropout=dropout)
        method.load_folded_state(tensors)
        return method

    # -- declarations a subclass overrides ---------------------------------------------------------
    @classmethod
    def peft_form(cls, config: MethodConfig, family: Family) -> PeftForm:
        """PEFT's representation of this method on a `family` backbone, or NotRepresentable saying why not."""
        raise NotRepresentable(f"{config.name} has no PEFT counterpart")

    @classmethod
    def check_init_artifact(cls, config: MethodConfig, shapes: Mapping[str, list[int]]) -> None:
        """Raise ConfigError when a trained prompt of this method whose folded tensors have `shapes` (read from its
        spec, before anything loads) cannot start `config`; the generic checks (method, prompt length, backbone)
        are done."""

    @classmethod
    def peft_import_overrides(cls, adapter_config: Mapping[str, Any]) -> list[str]:
        """The softprompt-train overrides that build a foreign adapter's folded form: `peft_imports` for its type,
        plus any that its config fields set (a subclass adds them)."""
        return list(cls.peft_imports[adapter_config["peft_type"]])

    @classmethod
    def check_peft_import(cls, adapter_config: Mapping[str, Any], width: int) -> None:
        """Raise NotRepresentable for an adapter of one of `peft_imports`' types that is not our folded form
        (`width`: the stored tensor's last dimension)."""

    @classmethod
    def mixed_batch_kind(cls) -> Injection | None:
        """How this method joins a mixed-prompt batch: its injection point, provided it enters the backbone only
        through the hooks of the class that declared that point (a subclass that overrides a hook injects some
        other way and must declare it); None = it cannot join one."""
        declaring = next(k for k in cls.__mro__ if "injection" in vars(k))
        if any(getattr(cls, hook) is not getattr(declaring, hook) for hook in INJECTION_HOOKS):
            return None
        return cls.injection

    def inspect(self, tokenizer: PreTrainedTokenizerBase, top_k: int) -> list[str]:
        """What softprompt-inspect prints about this prompt's tensors: the first line completes the header that
        names the prompt ("... 20 virtual tokens"), the rest follow."""
        return [f": {self.method_name} has no trained prompt tensors, so there is nothing to inspect"]

    def parameter_groups(self) -> list[dict[str, Any]]:
        """The optimizer's parameter groups: by default one, at the optimizer's lr; a method whose tensors train
        at different rates gives a group its own `lr` (the scheduler scales each group's lr alike)."""
        return [{"params": self.trainable_parameters()}]

    # -- injection: subclasses override -------------------------------------------------------
    def embed_inputs(self, batch: Batch) -> torch.Tensor:
        """Input embeddings for the backbone; input-level methods place their prompt here."""
        return self.adapter.embed(self.backbone, batch["input_ids"])

    def attention_kwargs(self) -> dict[str, Any]:
        """Extra forward kwargs reaching every attention call; attention-level methods add prefixes."""
        return {}

    # -- folding: the trained tensors with any reparameterisation computed away -------------------
    def folded_shapes(self) -> dict[str, tuple[int, ...]]:
        """The folded tensors this method owns (beside the objective's), by key, with their shapes."""
        return {}

    def own_folded_state(self) -> dict[str, torch.Tensor]:
        """This method's folded tensors (the keys of `folded_shapes`), computed from the trained ones."""
        return {}

    def set_folded(self, tensors: dict[str, torch.Tensor]) -> None:
        """Become the folded form holding `tensors` (checked, fp32 copies of every key of `folded_shapes`)."""

    def folded_state(self) -> dict[str, torch.Tensor]:
        """The objective's tensors (the classification head, for encoder families) and the method's own."""
        return {**self.objective.folded_state(), **{k: v.detach().clone() for k, v in self.own_folded_state().items()}}

    def load_folded_state(self, state: Mapping[str, torch.Tensor]) -> None:
        """The one loader of folded tensors: every key the method owns, of its shape, and the objective's."""
        objective_shapes = {key: tuple(t.shape) for key, t in self.objective.folded_state().items()}
        shapes, objective_keys = self.folded_shapes(), set(objective_shapes)
        missing = sorted(set(shapes) - set(state))
        if missing:
            raise SoftPromptError(f"{self.method_name} needs the folded tensors {missing}; found {sorted(state)}")
        unknown = sorted(k for k in state if k not in shapes and k not in objective_keys)
        if unknown:
            raise SoftPromptError(f"{self.method_name} does not store {unknown}")
        for key, shape in {**shapes, **{k: v for k, v in objective_shapes.items() if k in state}}.items():
            if tuple(state[key].shape) != tuple(shape):
                raise SoftPromptError(f"folded {key} has shape {tuple(state[key].shape)}; {self.method_name} "
                                      f"expects {tuple(shape)}")
        self.objective.load_folded_state({k: v for k, v in state.items() if k not in shapes})
        self.set_folded({key: state[key].detach().clone().float() for key in shapes})

    def num_folded_params(self) -> int:
        return sum(t.numel() for t in self.folded_state().values())

    # -- forward passes with the prompt in ---------------------------------------------------------
    def prompted(self, batch: Batch) -> PromptedInput:
        """The batch as the backbone reads it, with this method's prompt in."""
        return PromptedInput(self.embed_inputs(batch), batch["attention_mask"], self.position_offset,
                             self.attention_kwargs(), batch.get("answer_index"), batch.get("target_ids"),
                             batch.get("target_mask"))

    def check_entered(self, inputs: PromptedInput) -> None:
        """Raise when the prompt did not reach the backbone in a forward on `inputs` (a method whose prompt enters
        through hooks of its own checks that they ran); the embeddings and attention kwargs always do."""

    def hidden_states(self, batch: Batch) -> torch.Tensor:
        inputs = self.prompted(batch)
        hidden = self.adapter.hidden_states(self.backbone, inputs)
        self.check_entered(inputs)
        return hidden

    def target_hidden(self, batch: Batch) -> torch.Tensor:
        """Teacher-forced hidden states predicting each target token (generation tasks)."""
        inputs = self.prompted(batch)
        hidden = self.adapter.target_hidden(self.backbone, inputs)
        self.check_entered(inputs)
        return hidden

    @torch.no_grad()
    def generate(self, batch: Batch, config: DecodingConfig, eos_token_id: int) -> list[list[int]]:
        """Token ids per row (cut before `eos_token_id`), decoded with the prompt in place and the KV cache on."""
        inputs = self.prompted(batch)
        first, session = self.adapter.start_generation(self.backbone, inputs)
        self.check_entered(inputs)
        return decode(first.float(), session, eos_token_id, config)

    @torch.no_grad()
    def score_and_generate(self, batch: Batch, config: DecodingConfig, eos_token_id: int
                           ) -> tuple[torch.Tensor, list[list[int]]]:
        """Evaluation of a generation task with the prompted source read once: the teacher-forced hidden states
        predicting each target token, and the decoded token ids per row (as `generate` gives them)."""
        inputs = self.prompted(batch)
        hidden, first, session = self.adapter.score_and_start_generation(self.backbone, inputs)
        self.check_entered(inputs)
        return hidden, decode(first.float(), session, eos_token_id, config)

    def forward(self, batch: Batch) -> torch.Tensor:
        """The objective's outputs: (batch, num_labels) label scores, or target-token logits."""
        return self.objective.outputs(self, batch)

    # -- frozen backbone -----------------------------------------------------------------------
    def train(self, mode: bool = True) -> SoftPromptMethod:
        super().train(mode)
        if not self.backbone_dropout:
            # Every backbone module stays in eval mode: no dropout anywhere, whatever a layer's own body
            # reads (BART-family layers call dropout(training=self.training) themselves).
            self.backbone.eval()
        # Checkpointed layers recompute in backward in either mode (idempotent; enable_gradient_checkpointing
        # already did it, this covers checkpointing switched on through transformers directly).
        checkpoint_in_any_mode(self.backbone)
        return self

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def num_trainable_params(self) -> int:
        return sum(p.numel() for p in self.trainable_parameters())
