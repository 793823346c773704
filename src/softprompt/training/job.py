"""Job assembly: the frozen backbone, the DataModule and the method module, from a resolved, checked config."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf, open_dict

from softprompt.backbones.attention_prefix import enable_prefix_injection
from softprompt.backbones.cache import BACKBONES
from softprompt.backbones.families import FAMILY_ADAPTERS
from softprompt.backbones.loading import Backbone
from softprompt.config.precision import AUTO, resolve_auto, trainer_precision
from softprompt.data import PromptDataModule
from softprompt.data.datamodule import SplitLoaders
from softprompt.data.mixture import MixtureDataModule
from softprompt.data.sources import read_splits
from softprompt.data.task import MixtureTask, parse_task, task_members
from softprompt.errors import ConfigError
from softprompt.methods import build_method, method_class, method_config
from softprompt.methods.base import Injection
from softprompt.methods.config import PromptConfig
from softprompt.methods.init import InitContext
from softprompt.methods.layout import prompt_template
from softprompt.objectives import build_objective
from softprompt.training.artifact_init import artifact_init_state
from softprompt.training.module import TrainingModule, training_module

log = logging.getLogger("softprompt")


def resolved_config(cfg: DictConfig) -> dict[str, Any]:
    """The job config as plain containers. A `hydra` node (compose API only) is left out, unresolved."""
    return OmegaConf.to_container(OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"]), resolve=True)


def settle_precision(cfg: DictConfig) -> dict[str, str]:
    """Resolve `trainer.precision=auto` for this machine in the config itself (the Trainer and the backbone
    loader read it) and log it; returns what metrics.json and the artifact record."""
    requested = trainer_precision(cfg.trainer)
    resolution = resolve_auto(cfg.trainer, cfg.backbone)
    with open_dict(cfg):
        cfg.trainer.precision, cfg.backbone.dtype = resolution["trainer"], resolution["backbone_dtype"]
    if requested == AUTO:
        log.info("trainer.precision=auto: %s, frozen backbone in %s (%s); trainable tensors stay float32",
                 resolution["trainer"], resolution["backbone_dtype"], resolution["why"])
    return {"requested": requested, **resolution}


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


def build_job(plain: dict[str, Any], cache_dir: Path) -> Job:
    """Backbone, DataModule (set up) and method module from a resolved, checked job config."""
    seed = int(plain["seed"])
    method, task = method_config(plain["method"]), parse_task(plain["task"])
    # Bad data fails here, in one line, before the backbone loads; the DataModule reads the same splits again
    # from datasets' cache.
    for member in task_members(task).values():
        read_splits(member, plain["cv"], cache_dir)
    backbone = BACKBONES.get_for_job(plain, cache_dir)  # the dtype trainer.precision implies
    # Seeded after loading, so a job draws the same numbers whether its backbone was loaded or reused. Quietly:
    # Lightning says so on stderr, where a refusal must stay the one line (the seed is in metrics.json).
    L.seed_everything(seed, workers=True, verbose=False)
    if method_class(plain["method"]).injection == Injection.ATTENTION:
        enable_prefix_injection(backbone.model)  # an architecture a prefix cannot reach fails before tokenising
    adapter = FAMILY_ADAPTERS[backbone.family]
    if plain["data"]["padding_side"] == "left" and not adapter.supports_left_padding:
        raise ConfigError("data.padding_side", "left", f"{backbone.family} backbones need right padding")
    answer = {"answer_token_id": adapter.answer_token_id(backbone.tokenizer),
              "answer_must_end": adapter.answer_is_next_token}
    if isinstance(task, MixtureTask):
        templates = {name: prompt_template(method, member.template) for name, member in task.members.items()}
        datamodule = MixtureDataModule(task, plain["data"], plain["cv"], templates, backbone.tokenizer, cache_dir,
                                       seed, **answer)
    else:
        datamodule = PromptDataModule(task, plain["data"], plain["cv"], prompt_template(method, task.template),
                                      backbone.tokenizer, cache_dir, seed, num_demonstrations=method.num_demonstrations,
                                      demonstration_separator=method.demonstration_separator, **answer)
    objective = build_objective(task, adapter, backbone.tokenizer, backbone.hidden_size)  # before tokenising
    token_ids = getattr(objective, "label_token_ids", [])  # generation tasks have no label words
    datamodule.setup()
    trained = build_method(method, backbone=backbone, objective=objective, dropout=bool(plain["backbone"]["dropout"]),
                           init_context=lambda: build_init_context(method, seed, backbone, datamodule, token_ids),
                           initial_state=artifact_init_state(plain["method"], backbone.model))
    module = training_module(trained, plain["optimizer"])
    return Job(backbone, datamodule, module)
