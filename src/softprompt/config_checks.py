"""Validate a composed config before anything is loaded; each problem is one line naming the key."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from transformers.trainer_utils import SchedulerType

from softprompt.backbones.loading import DTYPES, FAMILIES
from softprompt.data.datamodule import TARGET
from softprompt.data.sources import LABEL
from softprompt.data.templates import Template
from softprompt.data.verbalizer import label_words
from softprompt.errors import ConfigError, require_positive_int
from softprompt.methods import method_class
from softprompt.methods.layout import SLOT_LAYOUTS, prompt_template
from softprompt.methods.objectives import check_objective_config
from softprompt.precision import check_precision, runs_on_cpu, strategy_name, uses_fsdp


def check_method(method: Mapping) -> None:
    if method.get("slots") not in SLOT_LAYOUTS:
        raise ConfigError("method.slots", method.get("slots"), f"allowed: {', '.join(SLOT_LAYOUTS)}")
    method_class(method).validate_config(method)


def check_task(task: Mapping, method: Mapping) -> None:
    check_objective_config(task)
    fields = list(task.get("text_fields") or [])
    if not fields:
        raise ConfigError("task.text_fields", task.get("text_fields"), "list at least one text field")
    generation = task["type"] == "generation"
    columns = task.get("columns") or {}
    for name in [*fields, TARGET if generation else LABEL]:
        if name not in columns:
            raise ConfigError("task.columns", dict(columns), f"map the field {name!r} to a dataset column")
    Template.parse(str(task["template"]), fields)
    template = Template.parse(prompt_template(method, str(task["template"])), fields,
                              key="method.template" if method.get("slots") == "template" else "task.template")
    if method.get("slots") != "none" and template.num_virtual_tokens != method.get("num_virtual_tokens"):
        raise ConfigError("method.num_virtual_tokens", method.get("num_virtual_tokens"),
                          f"the template {template.text!r} has {template.num_virtual_tokens} slots")
    require_positive_int("task.max_length", task.get("max_length"))
    if generation:
        require_positive_int("task.max_target_length", task.get("max_target_length"))
        if not isinstance(task.get("target_prefix"), str):
            raise ConfigError("task.target_prefix", task.get("target_prefix"), "must be a string (\" \" or \"\")")
        if not template.answer_at_end:
            raise ConfigError("task.template", template.text, "a generation task's target follows the template; "
                              "leave {answer} out")
        if method.get("init") == "class_labels":
            raise ConfigError("method.init", "class_labels", "a generation task has no class labels; use vocab, "
                              "text, random_uniform or random_normal")
        return
    labels = [str(x) for x in task.get("labels") or []]
    if len(labels) < 2:
        raise ConfigError("task.labels", labels, "list at least two label names")
    label_words(labels, task["verbalizer"])


CV_MODES = ("single", "all")


def check_cv(cv: Mapping, splits: Mapping) -> None:
    num_folds = cv.get("num_folds")
    mode = cv.get("mode", "single")
    if mode not in CV_MODES:
        raise ConfigError("cv.mode", mode, "allowed: single (one fold per job), all (every fold in one job)")
    if mode == "all" and num_folds is None:
        raise ConfigError("cv.mode", mode, "needs folds: set cv.num_folds=K (or cv=kfold)")
    if num_folds is None:
        # Without folds, selection uses the task's validation split; the test split must be another one.
        for role in ("validation", "test"):
            if not splits.get(role):
                raise ConfigError(f"task.splits.{role}", splits.get(role),
                                  "without cv.num_folds the task needs both a validation and a test split "
                                  "(the test split never serves model selection); set cv.num_folds=K to hold "
                                  "out a fold of train instead")
        return
    if isinstance(num_folds, bool) or not isinstance(num_folds, int) or num_folds < 2:
        raise ConfigError("cv.num_folds", num_folds, "must be null (use the task's validation split) or >= 2")
    fold = cv.get("fold")
    if isinstance(fold, bool) or not isinstance(fold, int) or not 0 <= fold < num_folds:
        raise ConfigError("cv.fold", fold, f"must be an integer in [0, {num_folds}) for cv.num_folds={num_folds}")


def check_data(data: Mapping) -> None:
    require_positive_int("data.batch_size", data.get("batch_size"))
    require_positive_int("data.eval_batch_size", data.get("eval_batch_size"))
    if data.get("padding_side") not in ("left", "right"):
        raise ConfigError("data.padding_side", data.get("padding_side"), "allowed: left, right")
    if not isinstance(data.get("group_by_length"), bool):
        raise ConfigError("data.group_by_length", data.get("group_by_length"), "allowed: true, false")
    require_positive_int("data.length_group_batches", data.get("length_group_batches"))
    for role, limit in (data.get("max_samples") or {}).items():
        if role not in ("train", "validation", "test"):
            raise ConfigError(f"data.max_samples.{role}", limit, "allowed keys: train, validation, test")
        if limit is not None:
            require_positive_int(f"data.max_samples.{role}", limit)


def check_backbone(backbone: Mapping) -> None:
    if backbone.get("dtype") not in DTYPES:
        raise ConfigError("backbone.dtype", backbone.get("dtype"), f"allowed: {', '.join(DTYPES)}")
    if backbone.get("family") not in FAMILIES:
        raise ConfigError("backbone.family", backbone.get("family"), f"allowed: {', '.join(FAMILIES)}")
    if not (backbone.get("name_or_path") or backbone.get("asset") or backbone.get("random_init")):
        raise ConfigError("backbone.name_or_path", None, "set a hub id or local path")


# transformers.get_scheduler builds these without a warmup, whatever warmup_steps says.
SCHEDULERS_WITHOUT_WARMUP = ("constant", "reduce_lr_on_plateau", "greedy")


def check_optimizer(optimizer: Mapping) -> None:
    if not float(optimizer.get("lr", 0)) > 0:
        raise ConfigError("optimizer.lr", optimizer.get("lr"), "must be > 0")
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


def check_hardware(trainer: Mapping) -> None:
    """GPU presets on a machine without CUDA fail here in one line, not inside Lightning."""
    accelerator = str(trainer.get("accelerator") or "auto")
    if uses_fsdp(trainer):
        on_cpu = runs_on_cpu(trainer)
        if on_cpu != strategy_name(trainer).endswith(".CPUFSDPStrategy"):
            allowed = ("trainer=fsdp runs on CUDA GPUs; on CPU use trainer=fsdp_cpu (gloo processes)" if on_cpu else
                       "trainer=fsdp_cpu runs on CPU processes only; on GPUs use trainer=fsdp")
            raise ConfigError("trainer.accelerator", accelerator, allowed)
    if accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        raise ConfigError("trainer.accelerator", accelerator, "no CUDA device is visible on this machine; use "
                          "trainer=cpu, or trainer=ddp_cpu for several processes")


def check_config(cfg: Mapping) -> None:
    """All cheap checks, in the order a user reads the config."""
    check_backbone(cfg["backbone"])
    check_hardware(cfg["trainer"])
    check_precision(cfg["trainer"], cfg["backbone"])
    check_method(cfg["method"])
    check_task(cfg["task"], cfg["method"])
    check_cv(cfg["cv"], cfg["task"]["splits"])
    check_data(cfg["data"])
    if method_class(cfg["method"]).trains:
        check_optimizer(cfg["optimizer"])
    max_steps = cfg["trainer"].get("max_steps")
    if max_steps is not None and max_steps != -1 and (not isinstance(max_steps, int) or max_steps < 1):
        raise ConfigError("trainer.max_steps", max_steps, "must be -1 (use max_epochs) or an integer >= 1")
