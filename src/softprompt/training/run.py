"""One run: check the config, build the job, fit, test the best checkpoint, write the artifact and metrics.json."""

from __future__ import annotations

import json
import logging
import time
import warnings
from pathlib import Path
from typing import Any

import lightning as L
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig

from softprompt.artifacts.format import ARTIFACT_DIR, run_artifact_files
from softprompt.config.mixture import expand_task_mixture
from softprompt.data.datamodule import SplitLoaders
from softprompt.data.sampling import evaluates_whole_splits
from softprompt.training.checkpointing import AtomicCheckpointIO, ValidationHistory, resume_checkpoint
from softprompt.training.checks import check_config
from softprompt.training.distributed import gather_objects, keep_frozen_out_of_ddp
from softprompt.training.interrupts import Interrupted, lightning_call
from softprompt.training.job import build_job, resolved_config, settle_precision
from softprompt.training.loggers import finish_wandb, instantiate_all, prepare_wandb_env
from softprompt.training.module import TrainingModule
from softprompt.training.results import METRICS_FILE, stage_metrics, write_run_results
from softprompt.training.timing import StepTimer
from softprompt.training.transfer import prepare_transfer

log = logging.getLogger("softprompt")
# The frozen backbone is in eval mode on purpose (dropout off); Lightning warns about it on every fit.
warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode.*")


def _fit_and_test(cfg: DictConfig, module: TrainingModule, datamodule: SplitLoaders,
                  hyperparameters: dict[str, Any], resume_from: str | None):
    """Fit (when there is anything to train), resuming from `resume_from` when given, then test the best
    checkpoint by the objective's metric. Also returns the per-example predictions of the validation pass whose
    metrics are reported (None when a run resumed from a checkpoint that predates them)."""
    history, timer = ValidationHistory(module.objective.metric), StepTimer()
    callbacks = [*instantiate_all(cfg.get("callbacks")), history, timer]
    trainer: L.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=instantiate_all(cfg.get("logger")),
                                     plugins=[AtomicCheckpointIO()])  # a kill mid-save keeps the last whole ckpt
    for logger in trainer.loggers:  # the resolved config and parameter counts, in every logger
        logger.log_hyperparams(hyperparameters)
    # The callback that selects by a validation metric. Lightning adds one that monitors nothing where no callback
    # saves checkpoints (callbacks=none): it keeps the latest, so it selects nothing and the final weights count.
    checkpoint = next((c for c in trainer.checkpoint_callbacks if c.monitor is not None), None)
    best_path = None

    def call(what: str, function: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return lightning_call(trainer, what, function, *args, **kwargs)
        except Interrupted as interrupt:  # last.ckpt is written at every validation
            interrupt.checkpoint_step = history.records[-1]["step"] if history.records else None
            raise

    if module.trains:
        if resume_from:
            log.info("resuming from %s", resume_from)
        call("training", trainer.fit, module, datamodule=datamodule, ckpt_path=resume_from)
        best_path = checkpoint.best_model_path if checkpoint is not None and history.records else None
    if best_path:
        val = history.best()  # the first best, as ModelCheckpoint keeps it
    elif history.records and history.records[-1]["step"] == trainer.global_step:
        val = history.records[-1]
    else:
        # No validation ran during fit (e.g. max_steps below the validation interval): use final weights.
        val = {"step": trainer.global_step, **stage_metrics(call("validating", trainer.validate, module,
                                                                  datamodule)[0], "val")}
    val_predictions = history.predictions.get(int(val["step"]))  # the pass that gave `val` (history saw each)
    tested = call("testing", trainer.test, module, datamodule=datamodule, ckpt_path=best_path or None)
    return trainer, val, stage_metrics(tested[0], "test"), best_path, timer.rounded(), val_predictions


def run(cfg: DictConfig) -> dict[str, Any]:
    """The whole job; returns the metrics.json content. Ctrl-C raises `Interrupted`, saying what it stopped."""
    try:
        return _run(cfg)
    except KeyboardInterrupt as interrupt:
        if not isinstance(interrupt, Interrupted):
            interrupt = Interrupted("preparing the job (its data and backbone)")
        interrupt.output_dir = interrupt.output_dir or Path(cfg.paths.output_dir)
        if cfg.cv.get("mode", "single") == "all" and not interrupt.what.startswith("fold"):
            interrupt.what = f"fold {cfg.cv.fold}: {interrupt.what}"
        raise interrupt from None


def _run(cfg: DictConfig) -> dict[str, Any]:
    started = time.perf_counter()
    expand_task_mixture(cfg)
    check_config(resolved_config(cfg))
    transfer = prepare_transfer(cfg, run)  # a source prompt first (SPoT); the target then starts from it
    precision = settle_precision(cfg)
    plain = resolved_config(cfg)
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

    prepare_wandb_env(cfg.get("logger"))
    counts = {"trainable_params": trainable, "folded_params": folded, "total_params": total}
    trainer, val, test, best_path, step_seconds, val_predictions = _fit_and_test(
        cfg, module, datamodule, {**plain, **counts}, resume_from)
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
        "tasks": list(plain["task"]["tasks"]) if plain["task"]["type"] == "mixture" else None,  # in task-id order
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
        "step_seconds": step_seconds,  # inside training/evaluation steps; the rest of wall_seconds is fixed cost
        "precision": precision,
        "transfer_source": transfer["source_task"] if transfer else None,
        "transfer": transfer,
        # Examples whose text task.max_length cut, and split sizes before and after data.max_samples.
        "truncated": datamodule.truncated,
        "split_sizes": datamodule.split_sizes,
        # k-fold runs: {stratified_by, grouped_by (task.columns.group or null), groups: {train, validation}}.
        "fold_split": datamodule.fold_split,
        # task.references=grouped: {validation, test: {sources, references}} scored (a mixture's: per task); else null.
        "references": datamodule.references,
        "method_config": plain["method"],
        "tags": list(cfg.get("tags") or []),
        "overrides": list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else [],
    }
    predictions = (module.test_predictions if evaluates_whole_splits(trainer)
                   else gather_objects(trainer, module.test_predictions))  # every process's share of the test set
    with module.full_trainable_tensors():
        if trainer.is_global_zero:
            # The module holds the tested (best) checkpoint's tensors: trainer.test(ckpt_path=best) loaded them.
            # One commit: metrics.json marks the run finished (resume_sweep); prompt/ appears only after it.
            artifact = run_artifact_files(module.method, plain, summary, backbone, datamodule.demonstration_ids)
            try:
                path = write_run_results(output_dir, summary, predictions, {ARTIFACT_DIR: artifact},
                                         val_predictions=val_predictions)
            except KeyboardInterrupt:
                raise Interrupted("writing the results (nothing of them was kept)") from None
            log.info("val %s | test %s | wrote %s and %s/", val, test, path, output_dir / ARTIFACT_DIR)
    return summary


def run_and_finish(cfg: DictConfig) -> dict[str, Any]:
    """One run; its wandb run is closed even on failure, so the next run of the process starts its own."""
    try:
        return run(cfg)
    finally:
        finish_wandb()
