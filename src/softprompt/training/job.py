"""Job assembly: the frozen backbone, the DataModule and the method module, from a parsed job (job_config)."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import lightning as L
import torch

from softprompt.backbones.attention_prefix import enable_prefix_injection
from softprompt.backbones.cache import BACKBONES
from softprompt.backbones.families import FAMILY_ADAPTERS
from softprompt.backbones.loading import Backbone
from softprompt.data import PromptDataModule
from softprompt.data.datamodule import SplitLoaders
from softprompt.data.mixture import MixtureDataModule
from softprompt.data.settings import Rendering
from softprompt.data.sources import read_splits
from softprompt.data.task import MixtureTask, task_members
from softprompt.errors import ConfigError
from softprompt.methods import build_method
from softprompt.methods.base import Injection
from softprompt.methods.config import PromptConfig
from softprompt.methods.init import InitContext
from softprompt.methods.layout import prompt_template
from softprompt.objectives import build_objective
from softprompt.training.artifact_init import artifact_init_state
from softprompt.training.job_config import JobConfig, resolved_config

__all__ = ["Job", "build_init_context", "build_job", "resolved_config"]
from softprompt.training.module import TrainingModule, training_module

log = logging.getLogger("softprompt")


def build_init_context(method: PromptConfig, seed: int, backbone: Backbone, datamodule: SplitLoaders,
                       token_ids: list) -> InitContext:
    """What an initialisation may look at; token counts only for the inits that read them."""
    return InitContext(
        embeddings=backbone.model.get_input_embeddings().weight.detach(),
        tokenizer=backbone.tokenizer,
        token_counts=datamodule.token_counts() if method.init in ("vocab", "class_labels") else None,
        label_token_ids=token_ids,
        generator=torch.Generator().manual_seed(seed),
        init_range=method.init_range,
        init_std=method.init_std,
        init_vocab_size=method.init_vocab_size,
        init_text=method.init_text,
    )


@dataclass
class Job:
    """What a run trains: the frozen backbone, the data and the method module."""

    backbone: Backbone
    datamodule: SplitLoaders
    module: TrainingModule


def build_job(job: JobConfig) -> Job:
    """Backbone, DataModule (set up) and method module of a parsed job."""
    plain, method, task, cache_dir, seed = job.plain, job.method, job.task, job.cache_dir, job.seed
    # Bad data fails here, in one line, before the backbone loads; the DataModule then uses these splits.
    splits = {name: read_splits(member, plain["cv"], cache_dir) for name, member in task_members(task).items()}
    backbone = BACKBONES.get_for_job(plain, cache_dir)  # the dtype trainer.precision implies
    # Seeded after loading, so a job draws the same numbers whether its backbone was loaded or reused. Quietly:
    # Lightning says so on stderr, where a refusal must stay the one line (the seed is in metrics.json).
    L.seed_everything(seed, workers=True, verbose=False)
    if job.method_class.injection == Injection.ATTENTION:
        enable_prefix_injection(backbone.model)  # an architecture a prefix cannot reach fails before tokenising
    adapter = FAMILY_ADAPTERS[backbone.family]
    if plain["data"]["padding_side"] == "left" and not adapter.supports_left_padding:
        raise ConfigError("data.padding_side", "left", f"{backbone.family} backbones need right padding")
    answer = {"answer_token_id": adapter.answer_token_id(backbone.tokenizer),
              "answer_must_end": adapter.answer_is_next_token}
    if isinstance(task, MixtureTask):  # no demonstrations in a mixture (config checks)
        renderings = {name: Rendering(prompt_template(method, member.template), **answer)
                      for name, member in task.members.items()}
        datamodule = MixtureDataModule(task, job.data, job.cv, renderings, backbone.tokenizer, cache_dir, seed,
                                       raw_splits=splits)
    else:
        rendering = Rendering(prompt_template(method, task.template), method.num_demonstrations,
                              method.demonstration_separator, **answer)
        datamodule = PromptDataModule(task, job.data, job.cv, rendering, backbone.tokenizer, cache_dir, seed,
                                      raw_splits=splits[task.name])
    objective = build_objective(task, adapter, backbone.tokenizer, backbone.hidden_size)  # before tokenising
    token_ids = getattr(objective, "label_token_ids", [])  # generation tasks have no label words
    datamodule.setup()
    trained = build_method(method, backbone=backbone, objective=objective, dropout=bool(plain["backbone"]["dropout"]),
                           init_context=lambda: build_init_context(method, seed, backbone, datamodule, token_ids),
                           initial_state=artifact_init_state(job.method_class, method, backbone.model))
    module = training_module(trained, plain["optimizer"])
    return Job(backbone, datamodule, module)
