"""The shared LightningModule: loop, forward passes with the prompt in, generation, optimizer,
checkpoint hygiene. The task side (loss, metrics, predictions) is an Objective.

A method subclass adds only its trainable tensors and how they enter the frozen backbone
(`embed_inputs` for input-level methods, `attention_kwargs` for attention-level ones), and declares
what it is, once (see "what the method is" below): its typed config, injection point, folded form,
PEFT form and what inspection shows. Artifacts, PEFT interop, mixed batches, inspection and the
benchmark read these declarations and never name a method.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any, ClassVar

import lightning as L
import torch
from hydra.utils import instantiate
from torch.distributed.fsdp import FullStateDictConfig, StateDictType
from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
from transformers import PreTrainedTokenizerBase, get_scheduler

from softprompt.backbones import Backbone, fingerprint
from softprompt.backbones.checkpointing import checkpoint_in_any_mode
from softprompt.backbones.families import FAMILY_ADAPTERS, Family, PromptedInput
from softprompt.backbones.loading import fingerprint_state, tied_aliases
from softprompt.config.typed import parse
from softprompt.errors import BackboneModifiedError, SoftPromptError
from softprompt.methods.config import MethodConfig
from softprompt.methods.init import ARTIFACT_INIT, InitContext
from softprompt.objectives.base import Objective
from softprompt.objectives.decoding import DecodingConfig, decode
from softprompt.objectives.scoring import Batch

BACKBONE_PREFIX = "backbone."
TRAINABLE_KEYS = "softprompt_trainable_keys"  # saved beside the state dict, which FSDP pops on load


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
INJECTION_HOOKS = ("embed_inputs", "attention_kwargs", "hidden_states", "target_hidden", "generate")


class SoftPromptModule(L.LightningModule):
    """Frozen backbone + a method's trainable part, trained by its objective's loss."""

    # -- what the method is: declared once, read by artifacts, interop, mixed batches, inspection, benchmark ---
    Config: ClassVar[type[MethodConfig]] = MethodConfig  # the typed `method` config
    # Where the prompt enters: "input" (embeddings at template slots: prompt_embeddings()), "attention"
    # (key/value prefixes: prefix_grid() and geometry) or "none".
    injection: ClassVar[str] = "none"
    trains = True  # False for methods without trainable tensors: fitting is skipped
    # The folded form's config values (the artifact, init=from_artifact): the reparameterisation is computed away.
    folded_config: ClassVar[Mapping[str, Any]] = {}
    folded_away: ClassVar[tuple[str, ...]] = ()  # the keys of folded_config that name a reparameterisation
    # The `method.init` values that start from a trained prompt of this method (`method.init_artifact`, a run's
    # prompt/ folder): training/artifact_init.py reads its tensors for them.
    artifact_inits: ClassVar[tuple[str, ...]] = (ARTIFACT_INIT,)
    num_virtual_tokens = 0
    position_offset = 0  # where real tokens' position ids start (the prefix length for prefix methods)

    def __init__(self, *, backbone: Backbone, objective: Objective, optimizer: Mapping, name: str,
                 dropout: bool = False) -> None:
        super().__init__()
        self.backbone = backbone.model
        self.adapter = FAMILY_ADAPTERS[backbone.family]
        self.objective = objective
        self.optimizer_cfg = dict(optimizer)
        self.method_name = name
        self.backbone_dropout = dropout
        self.strict_loading = False  # checkpoints deliberately hold the trainable state only
        self.test_predictions: list[dict[str, Any]] = []
        self.val_predictions: list[dict[str, Any]] = []  # this process's share of the latest validation pass
        self.backbone_fingerprint: str | None = None

    # -- configuration ---------------------------------------------------------------------------
    @classmethod
    def parse_config(cls, method: Mapping) -> MethodConfig:
        """The `method` group as this method's typed Config, every key checked (ConfigError, one line)."""
        return parse(cls.Config, method, "method", name=str(method.get("name")))

    @classmethod
    def from_config(cls, config: MethodConfig, init_context: Callable[[], InitContext],
                    initial_state: Mapping[str, torch.Tensor] | None = None, **common) -> SoftPromptModule:
        """The module for `config`; `initial_state` holds a trained prompt's folded tensors (init=from_artifact)."""
        return cls(**common)

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

    # PEFT types whose foreign adapters are this class's folded form: peft_type -> softprompt-train overrides.
    peft_imports: ClassVar[Mapping[str, list[str]]] = {}

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
    def mixed_batch_kind(cls) -> str | None:
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

    # -- injection: subclasses override -------------------------------------------------------
    def embed_inputs(self, batch: Batch) -> torch.Tensor:
        """Input embeddings for the backbone; input-level methods place their prompt here."""
        return self.adapter.embed(self.backbone, batch["input_ids"])

    def attention_kwargs(self) -> dict[str, Any]:
        """Extra forward kwargs reaching every attention call; attention-level methods add prefixes."""
        return {}

    # -- folding: the trained tensors with any reparameterisation computed away -------------------
    def folded_state(self) -> dict[str, torch.Tensor]:
        """Subclasses add their tensors to the objective's (the classification head, for encoder families)."""
        return self.objective.folded_state()

    def load_folded_state(self, state: Mapping[str, torch.Tensor]) -> None:
        """Load the objective's part; subclasses load their own tensor via `_folded_parameter`."""
        own = set(self.objective.folded_state())
        unknown = sorted(k for k in state if k not in own)
        if unknown:
            raise SoftPromptError(f"{self.method_name} does not store {unknown}")
        self.objective.load_folded_state(state)

    def _folded_parameter(self, state: Mapping[str, torch.Tensor], key: str,
                          shape: tuple[int, ...]) -> torch.nn.Parameter:
        """`state[key]` as a fresh fp32 parameter after checking its shape; the rest goes to the base."""
        tensor = state[key]
        if tuple(tensor.shape) != tuple(shape):
            raise SoftPromptError(f"folded {key} has shape {tuple(tensor.shape)}; {self.method_name} expects {shape}")
        SoftPromptModule.load_folded_state(self, {k: v for k, v in state.items() if k != key})
        return torch.nn.Parameter(tensor.detach().clone().float())

    def num_folded_params(self) -> int:
        return sum(t.numel() for t in self.folded_state().values())

    # -- forward passes with the prompt in ---------------------------------------------------------
    def prompted(self, batch: Batch) -> PromptedInput:
        """The batch as the backbone reads it, with this method's prompt in."""
        return PromptedInput(self.embed_inputs(batch), batch["attention_mask"], self.position_offset,
                             self.attention_kwargs(), batch.get("answer_index"), batch.get("target_ids"),
                             batch.get("target_mask"))

    def hidden_states(self, batch: Batch) -> torch.Tensor:
        return self.adapter.hidden_states(self.backbone, self.prompted(batch))

    def target_hidden(self, batch: Batch) -> torch.Tensor:
        """Teacher-forced hidden states predicting each target token (generation tasks)."""
        return self.adapter.target_hidden(self.backbone, self.prompted(batch))

    @torch.no_grad()
    def generate(self, batch: Batch, config: DecodingConfig, eos_token_id: int) -> list[list[int]]:
        """Token ids per row (cut before `eos_token_id`), decoded with the prompt in place and the KV cache on."""
        first, session = self.adapter.start_generation(self.backbone, self.prompted(batch))
        return decode(first.float(), session, eos_token_id, config)

    @torch.no_grad()
    def score_and_generate(self, batch: Batch, config: DecodingConfig, eos_token_id: int
                           ) -> tuple[torch.Tensor, list[list[int]]]:
        """Evaluation of a generation task with the prompted source read once: the teacher-forced hidden states
        predicting each target token, and the decoded token ids per row (as `generate` gives them)."""
        hidden, first, session = self.adapter.score_and_start_generation(self.backbone, self.prompted(batch))
        return hidden, decode(first.float(), session, eos_token_id, config)

    def forward(self, batch: Batch) -> torch.Tensor:
        """The objective's outputs: (batch, num_labels) label scores, or target-token logits."""
        return self.objective.outputs(self, batch)

    # -- loop ----------------------------------------------------------------------------------
    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        loss = self.objective.loss(self, batch)
        if not torch.isfinite(loss):
            hint = "lower optimizer.lr or check the inputs"
            if self.backbone.dtype == torch.float16:
                hint += " (a float16 backbone overflows past 65504; bfloat16 has float32's range)"
            raise SoftPromptError(f"train/loss is {loss.item()} at step {self.global_step} of {self.method_name}; "
                                  f"nothing was saved from this step on: {hint}")
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch["input_ids"]))
        return loss

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        self.val_predictions.extend(self.objective.evaluate(self, batch, "val"))

    def on_validation_epoch_start(self) -> None:
        self.val_predictions = []

    def on_validation_epoch_end(self) -> None:
        self.objective.end_epoch(self, "val")

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        self.test_predictions.extend(self.objective.evaluate(self, batch, "test"))

    def on_test_epoch_start(self) -> None:
        self.test_predictions = []

    def on_test_epoch_end(self) -> None:
        self.objective.end_epoch(self, "test")

    # -- frozen backbone -----------------------------------------------------------------------
    def train(self, mode: bool = True) -> SoftPromptModule:
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

    def parameter_groups(self) -> list[dict[str, Any]]:
        """The optimizer's parameter groups: by default one, at the optimizer's lr; a method whose tensors train
        at different rates gives a group its own `lr` (the scheduler scales each group's lr alike)."""
        return [{"params": self.trainable_parameters()}]

    def sharded_root(self) -> FSDP | None:
        """The root FSDP unit this module runs in, if any (its ranks each hold a shard of its tensors)."""
        root = self._trainer.strategy.model if self._trainer is not None else None
        return root if isinstance(root, FSDP) else None

    def current_backbone_fingerprint(self) -> str:
        root = self.sharded_root()
        if root is None:
            return fingerprint(self.backbone)
        # Gathered on every rank (a collective), under the names the unwrapped backbone has.
        config = FullStateDictConfig(offload_to_cpu=root.compute_device.type != "cpu", rank0_only=False)
        with FSDP.state_dict_type(root, StateDictType.FULL_STATE_DICT, config):
            state = root.state_dict()
        return fingerprint_state({k.removeprefix(BACKBONE_PREFIX): v for k, v in state.items()
                                  if k.startswith(BACKBONE_PREFIX)}, skip=tied_aliases(self.backbone))

    @contextmanager
    def full_trainable_tensors(self) -> Iterator[None]:
        """Under FSDP, gather the root unit's own tensors (the prompt, encoders, heads) for folding;
        every rank must enter. Elsewhere a no-op."""
        root = self.sharded_root()
        with FSDP.summon_full_params(root, recurse=False, writeback=False) if root else nullcontext():
            yield

    def record_backbone_fingerprint(self) -> str:
        self.backbone_fingerprint = self.current_backbone_fingerprint()
        return self.backbone_fingerprint

    def verify_backbone_unchanged(self) -> str:
        """Fail loudly if any frozen weight changed since `record_backbone_fingerprint`."""
        now = self.current_backbone_fingerprint()
        if self.backbone_fingerprint is not None and now != self.backbone_fingerprint:
            raise BackboneModifiedError(
                f"frozen backbone weights changed during the run (fingerprint {self.backbone_fingerprint} -> {now})")
        return now

    def on_fit_start(self) -> None:
        if self.backbone_fingerprint is None:
            self.record_backbone_fingerprint()
        if any(p.requires_grad for p in self.backbone.parameters()):
            raise BackboneModifiedError("a backbone parameter has requires_grad=True; the backbone must stay frozen")

    def on_fit_end(self) -> None:
        self.verify_backbone_unchanged()

    # -- checkpoints: trainable state only -------------------------------------------------------
    def trainable_state_names(self) -> set[str]:
        """State-dict keys outside the frozen backbone, found without calling the backbone's state_dict
        (under FSDP that would gather every shard)."""
        names = {name for name, _ in (*self.named_parameters(recurse=False), *self.named_buffers(recurse=False))}
        for child_name, child in self.named_children():
            if child is not self.backbone:
                names |= {f"{child_name}.{key}" for key in child.state_dict(keep_vars=True)}
        return names

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # The strategy's state dict (gathered under FSDP), less the frozen backbone.
        state = {k: v for k, v in checkpoint["state_dict"].items() if not k.startswith(BACKBONE_PREFIX)}
        checkpoint["state_dict"] = state
        checkpoint[TRAINABLE_KEYS] = sorted(state)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # FSDP's strategy loads the state dict and pops it before this hook; the key list saved beside it stays.
        found = set(checkpoint["state_dict"] if "state_dict" in checkpoint else checkpoint.get(TRAINABLE_KEYS, ()))
        expected = self.trainable_state_names()
        if expected != found:
            raise SoftPromptError(f"checkpoint does not match method {self.method_name}: "
                                  f"missing {sorted(expected - found)}, unexpected {sorted(found - expected)}")

    # -- optimisation ------------------------------------------------------------------------------
    def configure_optimizers(self) -> dict[str, Any]:
        settings = dict(self.optimizer_cfg)
        schedule = settings.pop("scheduler")
        # Partial: Hydra would turn the groups (dicts of tensors) into DictConfigs, which torch refuses.
        optimizer = instantiate(settings, _partial_=True)(params=self.parameter_groups())
        scheduler = get_scheduler(str(schedule["name"]), optimizer,
                                  num_warmup_steps=int(schedule["warmup_steps"]),
                                  num_training_steps=int(self.trainer.estimated_stepping_batches))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def configure_gradient_clipping(self, optimizer: torch.optim.Optimizer, gradient_clip_val: float | None = None,
                                    gradient_clip_algorithm: str | None = None) -> None:
        # Lightning's FSDP precision refuses norm clipping; FSDP's own clip_grad_norm_ takes the norm
        # over every shard, so trainer.gradient_clip_val means the same under FSDP as elsewhere.
        sharded = self.trainer.strategy.model
        if gradient_clip_val and gradient_clip_algorithm in (None, "norm") and isinstance(sharded, FSDP):
            sharded.clip_grad_norm_(gradient_clip_val)
            return
        super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)
