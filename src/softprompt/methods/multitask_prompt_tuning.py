"""Multitask prompt tuning (MPT; Wang et al., ICLR 2023, "Multitask Prompt Tuning Enables Parameter-Efficient
Transfer Learning").

"Prompt decomposition" (the method section; its numbering was not checked against the paper's text here, which was
not reachable offline): the prompt of task k is one prompt shared by every task, P* (l x d), times,
element by element, a task-specific low-rank matrix: P_k = P* ∘ W_k with W_k = u_k ⊗ v_k^T (rank one). PEFT's
MULTITASK_PROMPT_TUNING (tuners/multitask_prompt_tuning/model.py) lets the factors have rank r: `prefix_task_cols`
(T, n, r) and `prefix_task_rows` (T, r, d), task t's prompt P * (cols[t] @ rows[t]); this module computes exactly
that (tested against PEFT's logits). Each row's task comes from `batch["task_ids"]` ((batch,), a task mixture's
task order); a batch without them is task 0. The number of tasks T is the objective's `num_tasks` (1 for a
single task). The prompts of every task are stacked into one (T n, d) table and a row's slots are offset by
its task: one F.embedding gather for the whole batch (its backward is deterministic).

Initialisation follows PEFT (MultitaskPromptTuningInit, lowercased): fresh factors are N(0, task_init_std) each,
cols drawn before rows (PEFT: std 0.02); the shared prompt from any prompt-tuning init (PEFT's TEXT is `text`,
its RANDOM, nn.Embedding's N(0, 1), is `random_normal` with init_std 1.0). The paper's source training and
target adaptation start a target task from the prompt learnt on the source tasks; PEFT's three ways read a trained MPT
prompt, here `method.init_artifact`: `average_source_tasks` (its P; every task's factors the mean over its
tasks), `exact_source_task` (its P and task `init_source_task`'s factors), `only_source_shared` (its P only).
`from_artifact` continues a trained prompt of as many tasks. The paper's "prompt distillation" (teacher prompts
trained per task, logit and hidden-state losses) is not implemented, as in PEFT: each task trains on its own loss.

Folding: nothing computes away; the artifact holds P and every task's factors, which is also what PEFT saves.
The method overrides `embed_inputs`, so mixed batches refuse it in one line.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any, ClassVar, Literal

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from softprompt.backbones import Backbone
from softprompt.backbones.families import Family, place_prompts
from softprompt.config.precision import full_precision
from softprompt.config.typed import above, at_least
from softprompt.errors import ConfigError, SoftPromptError
from softprompt.methods.base import PeftForm
from softprompt.methods.config import InputPromptConfig
from softprompt.methods.init import ARTIFACT_INIT, INIT_STRATEGIES, InitContext
from softprompt.methods.inspection import nearest_tokens_report
from softprompt.methods.virtual_tokens import VirtualTokens
from softprompt.objectives import Objective
from softprompt.objectives.scoring import Batch

FACTOR_KEYS = ("task_cols", "task_rows")
PEFT_FACTORS = MappingProxyType({"task_cols": "prefix_task_cols", "task_rows": "prefix_task_rows"})
SOURCE_INITS = ("average_source_tasks", "exact_source_task", "only_source_shared")
INITS = (*INIT_STRATEGIES, ARTIFACT_INIT, *SOURCE_INITS)


@dataclass(frozen=True)
class MultitaskPromptConfig(InputPromptConfig):
    """Prompt tuning's settings (for the shared prompt) plus the tasks' low-rank factors and the source inits."""

    encoder: Literal["none"]
    num_ranks: int = field(metadata=at_least(1))  # r
    task_init_std: float = field(metadata=above(0.0))  # fresh factors: N(0, task_init_std)
    init_source_task: int = field(metadata=at_least(0))  # init=exact_source_task: the source's task id

    def validate(self) -> None:
        if self.init not in INITS:
            raise ConfigError("method.init", self.init, f"allowed: {', '.join(INITS)}")
        if self.init not in SOURCE_INITS:
            super().validate()
            return
        if not self.init_artifact:
            raise ConfigError("method.init_artifact", self.init_artifact, f"init={self.init} needs the path of a "
                              f"trained {self.name} prompt, the source tasks' (a run's prompt/ folder)")
        InputPromptConfig.validate(replace(self, init=ARTIFACT_INIT))  # prompt tuning's rules for reading one


class MultitaskPrompt(VirtualTokens):
    """A shared prompt times a low-rank matrix per task, each row prompted by its own task's product."""

    Config = MultitaskPromptConfig
    artifact_inits: ClassVar[tuple[str, ...]] = (ARTIFACT_INIT, *SOURCE_INITS)
    # Nothing folds away: P and the factors are the compact form (and what PEFT saves).
    folded_config: ClassVar[Mapping[str, Any]] = MappingProxyType({})
    folded_away: ClassVar[tuple[str, ...]] = ()
    peft_imports: ClassVar[Mapping[str, list[str]]] = {"MULTITASK_PROMPT_TUNING": ["method=multitask_prompt_tuning"]}

    def __init__(self, config: MultitaskPromptConfig, *, init_context: InitContext | None = None,
                 source: Mapping[str, torch.Tensor] | None = None, **common) -> None:
        """`source`: a trained prompt's folded tensors, which a source init (SOURCE_INITS) starts from."""
        init = config.init
        if init in SOURCE_INITS and source is None and init_context is not None:
            raise ConfigError("method.init_artifact", config.init_artifact, f"init={init} starts from a trained "
                              "prompt's tensors, and none were given")
        # A source init takes the shared prompt from the source; without an init, `load_folded_state` fills it.
        super().__init__(config, init_context=init_context if init not in SOURCE_INITS else None, **common)
        self.init_artifact = config.init_artifact
        n, dim = self.prompt.shape
        tasks, rank = self.objective.num_tasks, config.num_ranks
        if source is not None:
            if tuple(source["prompt"].shape) != (n, dim):
                raise SoftPromptError(f"folded prompt has shape {tuple(source['prompt'].shape)}; "
                                      f"{self.method_name} expects {(n, dim)}")
            self.prompt = nn.Parameter(source["prompt"].detach().clone().float())
        if source is not None and init != "only_source_shared":
            cols, rows = self._source_factors(source, init, config.init_source_task, tasks, rank)
        elif init_context is None:  # placeholders for `load_folded_state`
            cols, rows = torch.zeros(tasks, n, rank), torch.zeros(tasks, rank, dim)
        else:  # PEFT's draw: cols, then rows
            cols = torch.randn((tasks, n, rank), generator=init_context.generator) * config.task_init_std
            rows = torch.randn((tasks, rank, dim), generator=init_context.generator) * config.task_init_std
        self.task_cols, self.task_rows = nn.Parameter(cols), nn.Parameter(rows)

    @classmethod
    def folded(cls, config: MultitaskPromptConfig, *, backbone: Backbone, objective: Objective,
               tensors: Mapping[str, torch.Tensor], dropout: bool = False) -> MultitaskPrompt:
        """As every method's, after checking a run's start (init=from_artifact) reads the factors of as many tasks
        as it trains (a ConfigError naming the source inits otherwise)."""
        method = cls(config, backbone=backbone, objective=objective, dropout=dropout)
        if config.init == ARTIFACT_INIT:
            method._source_factors(tensors, ARTIFACT_INIT, config.init_source_task, objective.num_tasks,
                                   config.num_ranks)
        method.load_folded_state(tensors)
        return method

    @classmethod
    def check_init_artifact(cls, config: MultitaskPromptConfig, shapes: Mapping[str, list[int]]) -> None:
        """The source's factors have this run's rank (not read by only_source_shared), and it holds the task
        exact_source_task names."""
        if config.init == "only_source_shared" or "task_cols" not in shapes:
            return
        tasks, _, rank = shapes["task_cols"]
        if rank != config.num_ranks:
            raise ConfigError("method.num_ranks", config.num_ranks, f"the artifact {config.init_artifact} has rank "
                              f"{rank} task factors; init={config.init} needs the same rank (only_source_shared "
                              "reads the shared prompt alone)")
        if config.init == "exact_source_task" and config.init_source_task >= tasks:
            raise ConfigError("method.init_source_task", config.init_source_task, f"the artifact "
                              f"{config.init_artifact} holds {tasks} task(s): allowed 0 to {tasks - 1}")

    def _source_factors(self, state: Mapping[str, torch.Tensor], init: str, source_task: int, tasks: int,
                        rank: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(cols, rows) for `tasks` tasks from a trained prompt's factors, as `init` takes them."""
        missing = [key for key in FACTOR_KEYS if key not in state]
        if missing:
            raise ConfigError("method.init_artifact", self.init_artifact, f"holds no {missing}; init={init} reads a "
                              f"trained {self.method_name} prompt's task factors")
        cols, rows = (state[key].detach().float() for key in FACTOR_KEYS)
        n, dim = self.prompt.shape
        found = len(cols)
        if (tuple(cols.shape), tuple(rows.shape)) != ((found, n, rank), (found, rank, dim)):
            raise ConfigError("method.init_artifact", self.init_artifact, f"holds task factors of shapes "
                              f"{tuple(cols.shape)} and {tuple(rows.shape)}; this run needs (tasks, {n}, {rank}) "
                              f"and (tasks, {rank}, {dim})")
        if init == ARTIFACT_INIT:
            if found != tasks:
                raise ConfigError("method.init_artifact", self.init_artifact, f"holds factors for {found} task(s); "
                                  f"this run trains {tasks}: start from it with init=average_source_tasks or "
                                  "exact_source_task")
            return cols.clone(), rows.clone()
        if init == "average_source_tasks":
            cols, rows = cols.mean(0, keepdim=True), rows.mean(0, keepdim=True)
        else:
            if source_task >= found:
                raise ConfigError("method.init_source_task", source_task, f"the source prompt holds {found} "
                                  f"task(s): allowed 0 to {found - 1}")
            cols, rows = cols[source_task:source_task + 1], rows[source_task:source_task + 1]
        return cols.expand(tasks, -1, -1).clone(), rows.expand(tasks, -1, -1).clone()

    # -- declarations --------------------------------------------------------------------------------------
    @classmethod
    def peft_form(cls, config: MultitaskPromptConfig, family: Family) -> PeftForm:
        """MULTITASK_PROMPT_TUNING: PEFT stores P as prompt_embeddings and the factors beside it, and builds each
        row's prompt from its `task_ids`. Its init reads the factors from the file (RANDOM: no source file)."""
        options = {"num_ranks": config.num_ranks, "prompt_tuning_init": "RANDOM"}
        return PeftForm("MULTITASK_PROMPT_TUNING", "prompt", options, options, extra_tensors=PEFT_FACTORS,
                        sized_by={"num_tasks": ("task_cols", 0)}, task_ids=True)

    @classmethod
    def peft_import_overrides(cls, adapter_config: Mapping[str, Any]) -> list[str]:
        """A foreign adapter's rank (PEFT's default 1)."""
        return [*super().peft_import_overrides(adapter_config),
                f"method.num_ranks={int(adapter_config.get('num_ranks') or 1)}"]

    # -- injection -----------------------------------------------------------------------------------------
    def task_prompts(self) -> torch.Tensor:
        """(tasks, n, d), fp32: P * (cols[t] @ rows[t]) for every task t."""
        with full_precision(self.prompt):
            return self.prompt * (self.task_cols @ self.task_rows)

    def prompt_embeddings(self) -> torch.Tensor:
        """(tasks x n, d): the slot table, task t's prompt at rows t n to t n + n - 1."""
        return self.task_prompts().flatten(0, 1)

    def task_ids(self, batch: Batch) -> torch.Tensor:
        """(batch,): each row's task, `batch["task_ids"]`; task 0 for a batch without them (a single task)."""
        ids = batch.get("task_ids")
        if ids is None:
            return torch.zeros(len(batch["input_ids"]), dtype=torch.long, device=batch["input_ids"].device)
        tasks = len(self.task_cols)
        if bool(((ids < 0) | (ids >= tasks)).any()):
            raise SoftPromptError(f"batch task_ids {sorted(set(ids.tolist()))}: {self.method_name} holds the "
                                  f"prompts of {tasks} task(s), ids 0 to {tasks - 1} (objective.num_tasks)")
        return ids

    def embed_inputs(self, batch: Batch) -> torch.Tensor:
        embeds = self.adapter.embed(self.backbone, batch["input_ids"])
        slots = batch["slot_ids"]
        offset = self.task_ids(batch).to(slots.device)[:, None] * self.num_virtual_tokens
        slots = torch.where(slots >= 0, slots + offset, slots)  # into the row's own task's part of the table
        return place_prompts(embeds, self.prompt_embeddings().to(embeds.dtype), slots)

    # -- folding: P and the factors as they are -------------------------------------------------------------
    def folded_shapes(self) -> dict[str, tuple[int, ...]]:
        return {**super().folded_shapes(), **{key: tuple(getattr(self, key).shape) for key in FACTOR_KEYS}}

    def own_folded_state(self) -> dict[str, torch.Tensor]:
        return {"prompt": self.prompt, **{key: getattr(self, key) for key in FACTOR_KEYS}}

    def set_folded(self, tensors: dict[str, torch.Tensor]) -> None:
        super().set_folded(tensors)
        for key in FACTOR_KEYS:
            setattr(self, key, nn.Parameter(tensors[key]))

    # -- inspection ------------------------------------------------------------------------------------------
    def inspect(self, tokenizer: PreTrainedTokenizerBase, top_k: int) -> list[str]:
        """Each task's prompt against the shared one (norms, cosine), then the shared prompt's nearest vocabulary
        tokens (prompt tuning's report)."""
        with torch.no_grad():
            prompts, shared = self.task_prompts().float(), self.prompt.detach().float()
            matrices = (self.task_cols @ self.task_rows).float()
        embeddings = self.backbone.get_input_embeddings().weight.detach()
        tasks, _, dim = prompts.shape
        lines = [f"per task, {tasks} task(s): the shared prompt P times a rank-{self.task_rows.shape[1]} task "
                 f"matrix, element by element, in the input embedding space (d={dim})"]
        for task, (prompt, matrix) in enumerate(zip(prompts, matrices, strict=True)):
            cosine = torch.nn.functional.cosine_similarity(prompt.flatten(), shared.flatten(), dim=0)
            lines.append(f"task {task}: prompt L2 norm per virtual token mean {float(prompt.norm(dim=-1).mean()):.4f}"
                         f" | task matrix Frobenius norm {float(matrix.norm()):.4f} | cosine to P "
                         f"{float(cosine):.4f}")
        return [*lines, "shared prompt P:", *nearest_tokens_report(shared, embeddings, tokenizer, top_k)]
