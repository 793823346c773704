"""Validate a composed job config before anything is loaded; each problem is one line naming the key.

Each layer checks its own settings (backbones, precision, methods with their task, data and folds); this
module runs them in the order a user reads the config, and checks what only a training job has: the
optimizer, the step budget and a prompt to start from (init=from_artifact).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from transformers.trainer_utils import SchedulerType

from softprompt.artifacts.ensemble import VOTES
from softprompt.backbones.loading import check_backbone
from softprompt.backbones.quantization import check_quantization, training_device
from softprompt.config.precision import check_hardware, check_precision, uses_fsdp
from softprompt.data.checks import check_cv, check_data
from softprompt.data.task import MixtureTask, TaskConfig, task_members
from softprompt.errors import ConfigError
from softprompt.methods import MethodConfig, SoftPromptMethod, method_class
from softprompt.methods.checks import check_method, check_task
from softprompt.training.artifact_init import check_artifact_init, reads_init_artifact
from softprompt.training.transfer import check_transfer

# transformers.get_scheduler builds these without a warmup, whatever warmup_steps says.
SCHEDULERS_WITHOUT_WARMUP = ("constant", "reduce_lr_on_plateau", "greedy")


def check_optimizer(optimizer: Mapping) -> None:
    lr = optimizer.get("lr")
    if isinstance(lr, bool) or not isinstance(lr, int | float) or not 0 < lr < math.inf:
        raise ConfigError("optimizer.lr", lr, "must be a finite number > 0")
    allowed = [s.value for s in SchedulerType]
    schedule = optimizer.get("scheduler") or {}
    name = schedule.get("name")
    if name not in allowed:
        raise ConfigError("optimizer.scheduler.name", name, f"allowed: {', '.join(allowed)}")
    warmup = schedule.get("warmup_steps")
    if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
        raise ConfigError("optimizer.scheduler.warmup_steps", warmup, "must be an integer >= 0")
    if warmup and name in SCHEDULERS_WITHOUT_WARMUP:
        raise ConfigError("optimizer.scheduler.warmup_steps", warmup, f"scheduler {name} has no warmup and would "
                          "ignore it; use optimizer.scheduler.name=constant_with_warmup (or linear, cosine, ...), or "
                          "warmup_steps=0")


def check_config(cfg: Mapping) -> tuple[type[SoftPromptMethod], MethodConfig, TaskConfig | MixtureTask]:
    """All cheap checks, in the order a user reads the config; returns the method class, its parsed config and the
    parsed task (or mixture)."""
    check_backbone(cfg["backbone"])
    check_hardware(cfg["trainer"])
    check_precision(cfg["trainer"], cfg["backbone"])
    check_quantization(cfg["backbone"], training_device(cfg["trainer"]), uses_fsdp(cfg["trainer"]))
    cls = method_class(cfg["method"])
    method = check_method(cfg["method"])
    check_transfer(cfg)
    if reads_init_artifact(cls, method):
        check_artifact_init(cls, method)
    task = check_task(cfg["task"], method)
    members = task_members(task)
    for name, member in members.items():
        check_cv(cfg["cv"], member.splits, "task" if len(members) == 1 else f"tasks[{name}]")
    check_data(cfg["data"])
    if cls.trains:
        check_optimizer(cfg["optimizer"])
    vote = (cfg.get("sweep") or {}).get("ensemble_vote")
    if vote not in VOTES:  # experiment=prompt_ensemble reads it when the multirun ends: refuse it before training
        raise ConfigError("sweep.ensemble_vote", vote, f"allowed: {', '.join(VOTES)}")
    max_steps = cfg["trainer"].get("max_steps")
    if isinstance(max_steps, bool) or (max_steps is not None and max_steps != -1
                                       and (not isinstance(max_steps, int) or max_steps < 1)):
        raise ConfigError("trainer.max_steps", max_steps, "must be -1 (use max_epochs) or an integer >= 1")
    return cls, method, task
