"""softprompt-train: compose the run from config, fit, test the best checkpoint, write metrics.json."""

from __future__ import annotations

import json
import logging
import os
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from lightning.fabric.utilities.rank_zero import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from softprompt.artifacts import ARTIFACT_DIR, save_artifact
from softprompt.backbones.cache import BACKBONES
from softprompt.backbones.families import FAMILY_ADAPTERS
from softprompt.backbones.loading import Backbone
from softprompt.checkpointing import ValidationHistory, resume_checkpoint
from softprompt.config_checks import check_config
from softprompt.config_dir import config_dir
from softprompt.cv_jobs import run_job
from softprompt.data import PromptDataModule
from softprompt.distributed import (
    distributed_job,
    evaluates_whole_splits,
    gather_objects,
    keep_frozen_out_of_ddp,
    use_job_worker_command,
)
from softprompt.errors import ConfigError, SoftPromptError
from softprompt.job_failures import clear_failure, one_line, write_failure
from softprompt.methods import build_method
from softprompt.methods.base import SoftPromptModule
from softprompt.methods.init import InitContext
from softprompt.methods.layout import prompt_template
from softprompt.methods.objectives import build_objective
from softprompt.run_results import METRICS_FILE, stage_metrics, write_run_results
from softprompt.wandb_mode import wandb_mode

log = logging.getLogger("softprompt")
# The frozen backbone is in eval mode on purpose (dropout off); Lightning warns about it on every fit.
warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode.*")


def _instantiate_all(group: DictConfig | None) -> list[Any]:
    if not group:
        return []
    return [instantiate(item) for item in group.values() if item and "_target_" in item]


def _prepare_wandb_env(logger_cfg: DictConfig | None) -> None:
    """wandb falls back to offline mode when no key is available."""
    uses_wandb = any("Wandb" in str(item.get("_target_", "")) for item in (logger_cfg or {}).values() if item)
    if uses_wandb:
        os.environ["WANDB_MODE"] = wandb_mode()


def _finish_wandb() -> None:
    """Close the wandb run so the next job of a multirun starts its own."""
    wandb = sys.modules.get("wandb")
    if wandb is not None and getattr(wandb, "run", None) is not None:
        wandb.finish()


def build_init_context(method: dict, seed: int, backbone, datamodule: PromptDataModule, token_ids) -> InitContext:
    return InitContext(
        embeddings=backbone.model.get_input_embeddings().weight.detach(),
        tokenizer=backbone.tokenizer,
        token_counts=datamodule.token_counts() if method["init"] in ("vocab", "class_labels") else None,
        label_token_ids=token_ids,
        generator=torch.Generator().manual_seed(seed),
        init_range=float(method["init_range"]),
        init_std=None if method.get("init_std") is None else float(method["init_std"]),
        init_vocab_size=int(method["init_vocab_size"]),
        init_text=method.get("init_text"),
    )


def _fit_and_test(cfg: DictConfig, module: SoftPromptModule, datamodule: PromptDataModule,
                  hyperparameters: dict[str, Any], resume_from: str | None):
    """Fit (when there is anything to train), resuming from `resume_from` when given, then test the best
    checkpoint by the objective's metric."""
    history = ValidationHistory()
    callbacks = [*_instantiate_all(cfg.get("callbacks")), history]
    trainer: L.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=_instantiate_all(cfg.get("logger")))
    for logger in trainer.loggers:  # the resolved config and parameter counts, in every logger
        logger.log_hyperparams(hyperparameters)
    checkpoint = trainer.checkpoint_callback
    best_path = None
    if module.trains:
        if resume_from:
            log.info("resuming from %s", resume_from)
        trainer.fit(module, datamodule=datamodule, ckpt_path=resume_from)
        best_path = checkpoint.best_model_path if checkpoint is not None and history.records else None
    if best_path:
        # The first best, as ModelCheckpoint keeps it.
        val = max(history.records, key=lambda r: r[module.objective.metric])
    elif history.records and history.records[-1]["step"] == trainer.global_step:
        val = history.records[-1]
    else:
        # No validation ran during fit (e.g. max_steps below the validation interval): use final weights.
        val = {"step": trainer.global_step, **stage_metrics(trainer.validate(module, datamodule)[0], "val")}
    test = stage_metrics(trainer.test(module, datamodule=datamodule, ckpt_path=best_path or None)[0], "test")
    return trainer, val, test, best_path


def resolved_config(cfg: DictConfig) -> dict[str, Any]:
    """The job config as plain containers. A `hydra` node (compose API only) is left out, unresolved."""
    return OmegaConf.to_container(OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"]), resolve=True)


@dataclass
class Job:
    """What a run trains: the frozen backbone, the data and the method module."""

    backbone: Backbone
    datamodule: PromptDataModule
    module: SoftPromptModule


def build_job(plain: dict[str, Any], cache_dir: Path) -> Job:
    """Backbone, DataModule (set up) and method module from a resolved, checked job config."""
    seed = int(plain["seed"])
    method = plain["method"]
    backbone = BACKBONES.get_for_job(plain, cache_dir)  # the dtype trainer.precision implies
    # Seeded after loading, so a job draws the same numbers whether its backbone was loaded or reused.
    L.seed_everything(seed, workers=True)
    adapter = FAMILY_ADAPTERS[backbone.family]
    if plain["data"]["padding_side"] == "left" and not adapter.supports_left_padding:
        raise ConfigError("data.padding_side", "left", f"{backbone.family} backbones need right padding")
    template = prompt_template(method, plain["task"]["template"])
    datamodule = PromptDataModule(plain["task"], plain["data"], plain["cv"], template, backbone.tokenizer,
                                  cache_dir, seed,
                                  num_demonstrations=int(method.get("num_demonstrations") or 0),
                                  demonstration_separator=str(method.get("demonstration_separator", "\n\n")),
                                  answer_token_id=adapter.answer_token_id(backbone.tokenizer),
                                  answer_must_end=adapter.answer_is_next_token)
    objective = build_objective(plain["task"], adapter, backbone.tokenizer, backbone.hidden_size)  # before tokenising
    token_ids = getattr(objective, "label_token_ids", [])  # generation tasks have no label words
    datamodule.setup()
    module = build_method(method, backbone=backbone, objective=objective, optimizer=plain["optimizer"],
                          dropout=bool(plain["backbone"]["dropout"]),
                          init_context=lambda: build_init_context(method, seed, backbone, datamodule,
                                                                  token_ids))
    return Job(backbone, datamodule, module)


def run(cfg: DictConfig) -> dict[str, Any]:
    """The whole job; returns the metrics.json content."""
    started = time.perf_counter()
    plain = resolved_config(cfg)
    check_config(plain)
    cache_dir = Path(cfg.paths.cache_dir).expanduser()
    output_dir = Path(cfg.paths.output_dir)
    finished = output_dir / METRICS_FILE
    if plain["resume_sweep"] and finished.is_file():
        log.info("resume_sweep: %s is finished (%s); skipping it", output_dir, METRICS_FILE)
        return json.loads(finished.read_text())
    resume_from = resume_checkpoint(plain["ckpt_path"], output_dir)

    job = build_job(plain, cache_dir)
    backbone, datamodule, module = job.backbone, job.datamodule, job.module
    objective = module.objective
    fingerprint_start = module.record_backbone_fingerprint()
    keep_frozen_out_of_ddp(module)
    trainable, total, folded = module.num_trainable_params(), backbone.total_params(), module.num_folded_params()
    log.info("%s: trainable params %s of %s (%.4f%%), %s after folding; backbone %s, fingerprint %s",
             module.method_name, f"{trainable:,}", f"{total:,}", 100 * trainable / total,
             f"{folded:,}", backbone.name, fingerprint_start)

    _prepare_wandb_env(cfg.get("logger"))
    counts = {"trainable_params": trainable, "folded_params": folded, "total_params": total}
    trainer, val, test, best_path = _fit_and_test(cfg, module, datamodule, {**plain, **counts}, resume_from)
    fingerprint_end = module.verify_backbone_unchanged()

    summary = {
        "method": cfg.method.name,
        "backbone": backbone.name,
        "backbone_source": backbone.source,
        "backbone_revision": backbone.revision,
        "backbone_fingerprint_start": fingerprint_start,
        "backbone_fingerprint_end": fingerprint_end,
        "task": cfg.task.name,
        "task_type": plain["task"]["type"],
        "selection_metric": f"val/{objective.metric}",
        "num_virtual_tokens": int(getattr(module, "num_virtual_tokens", 0)),
        "init": getattr(module, "init", None),
        "lr": float(cfg.optimizer.lr) if module.trains else None,
        "fold": cfg.cv.fold if cfg.cv.num_folds else None,
        "num_folds": cfg.cv.num_folds,
        "seed": int(cfg.seed),
        "trainable_params": trainable,
        "folded_params": folded,
        "total_params": total,
        "val": {k: v for k, v in val.items() if k != "step"},
        "test": test,
        "steps": int(trainer.global_step),
        "best_step": int(val["step"]),
        "best_checkpoint": best_path,
        "wall_seconds": round(time.perf_counter() - started, 3),
        # Examples whose text task.max_length cut, and split sizes before and after data.max_samples.
        "truncated": datamodule.truncated,
        "split_sizes": datamodule.split_sizes,
        "method_config": plain["method"],
        "tags": list(cfg.get("tags") or []),
        "overrides": list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else [],
    }
    predictions = (module.test_predictions if evaluates_whole_splits(trainer)
                   else gather_objects(trainer, module.test_predictions))  # every process's share of the test set
    with module.full_trainable_tensors():
        if trainer.is_global_zero:
            # The module holds the tested (best) checkpoint's tensors: trainer.test(ckpt_path=best) loaded them.
            # Written before metrics.json, which marks the run finished (resume_sweep).
            save_artifact(output_dir / ARTIFACT_DIR, module, plain, summary, backbone, datamodule.demonstration_ids)
            path = write_run_results(output_dir, summary, predictions)
            log.info("val %s | test %s | wrote %s and %s/", val, test, path, output_dir / ARTIFACT_DIR)
    return summary


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="train")
def main(cfg: DictConfig) -> float | None:
    """Hydra entry point; returns the validation selection metric (the fold mean under cv.mode=all), which
    sweepers such as Optuna optimise.

    A single run that fails exits (status 2 with one line for our errors). A job of a multirun that fails writes
    failed.json and returns None, so the sweep goes on (job_failures.FailureSummary reports it at the end)."""
    use_job_worker_command()
    output_dir = Path(cfg.paths.output_dir)
    try:
        with distributed_job():
            score = run_job(cfg, run_and_finish)
    except Exception as error:
        hydra_cfg = HydraConfig.get()
        if hydra_cfg.mode != RunMode.MULTIRUN:
            if isinstance(error, SoftPromptError):
                print(f"softprompt: error: {error}", file=sys.stderr)
                sys.exit(2)
            raise
        overrides = list(hydra_cfg.overrides.task)
        if rank_zero_only.rank == 0:
            write_failure(output_dir, error, overrides, hydra_cfg.job.get("num"))
        print(f"softprompt: error: job #{hydra_cfg.job.num} ({' '.join(overrides)}) failed: {one_line(error)}",
              file=sys.stderr)
        log.error("job failed; the sweep goes on", exc_info=not isinstance(error, SoftPromptError))
        return None
    if rank_zero_only.rank == 0:
        clear_failure(output_dir)
    return score


def run_and_finish(cfg: DictConfig) -> dict[str, Any]:
    """One run; its wandb run is closed even on failure, so the next run of the process starts its own."""
    try:
        return run(cfg)
    finally:
        _finish_wandb()


if __name__ == "__main__":
    main()
