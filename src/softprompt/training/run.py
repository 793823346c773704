"""One run: check the config, build the job, fit, test the best checkpoint, write the artifact and metrics.json."""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig

from softprompt.artifacts.format import ARTIFACT_DIR, run_artifact_files
from softprompt.artifacts.summary import RunSummary, load_summary
from softprompt.config.quantization import NONE
from softprompt.data.datamodule import SplitLoaders
from softprompt.data.sampling import evaluates_whole_splits
from softprompt.training.checkpointing import AtomicCheckpointIO, RandomState, ValidationHistory, resume_checkpoint
from softprompt.training.distributed import gather_objects, keep_frozen_out_of_ddp
from softprompt.training.interrupts import Interrupted, lightning_call
from softprompt.training.job import build_job
from softprompt.training.job_config import JobConfig, parse_and_transfer
from softprompt.training.loggers import finish_wandb, instantiate_all, prepare_wandb_env
from softprompt.training.module import TrainingModule
from softprompt.training.quantization_guard import QuantizedGradientGuard
from softprompt.training.results import METRICS_FILE, stage_metrics, write_run_results
from softprompt.training.timing import StepTimer

log = logging.getLogger("softprompt")
# The frozen backbone is in eval mode on purpose (dropout off); Lightning warns about it on every fit.
warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode.*")


def _fit_and_test(job: JobConfig, module: TrainingModule, datamodule: SplitLoaders,
                  hyperparameters: dict[str, Any], resume_from: str | None, quantization: str):
    """Fit (when there is anything to train), resuming from `resume_from` when given, then test the best
    checkpoint by the objective's metric. Also returns the per-example predictions of the validation pass whose
    metrics are reported (None when a run resumed from a checkpoint that predates them). `quantization`: the
    scheme the backbone loaded with."""
    history, timer = ValidationHistory(module.objective.metric), StepTimer()
    plain = job.plain  # the trainer node with its resolved precision; the composed config is only read
    callbacks = [*instantiate_all(plain.get("callbacks")), history, timer, RandomState()]
    if quantization != NONE:  # refuse a training step no gradient can pass (checked before the timer starts)
        callbacks.insert(0, QuantizedGradientGuard(module.backbone, quantization))
    trainer: L.Trainer = instantiate(plain["trainer"], callbacks=callbacks, logger=instantiate_all(plain.get("logger")),
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


def run(cfg: DictConfig, tasks: Sequence[Any] | None = None) -> dict[str, Any]:
    """The whole job; returns the metrics.json content. `tasks`: a `task=[a,b]` list from the command line. `cfg`
    is only read. Ctrl-C raises `Interrupted`, saying what it stopped."""
    try:
        return _run(cfg, tasks).record()
    except KeyboardInterrupt as interrupt:
        if not isinstance(interrupt, Interrupted):
            interrupt = Interrupted("preparing the job (its data and backbone)")
        interrupt.output_dir = interrupt.output_dir or Path(cfg.paths.output_dir)
        if cfg.cv.get("mode", "single") == "all" and not interrupt.what.startswith("fold"):
            interrupt.what = f"fold {cfg.cv.fold}: {interrupt.what}"
        raise interrupt from None


def _run(cfg: DictConfig, tasks: Sequence[Any] | None) -> RunSummary:
    started = time.perf_counter()
    # Checked and parsed once; a source prompt first (SPoT), which the target then starts from.
    job = parse_and_transfer(cfg, run, tasks)
    plain, output_dir = job.plain, job.output_dir
    finished = output_dir / METRICS_FILE
    if plain["resume_sweep"] and finished.is_file():
        log.info("resume_sweep: %s is finished (%s); skipping it", output_dir, METRICS_FILE)
        return load_summary(finished)
    resume_from = resume_checkpoint(plain["ckpt_path"], output_dir)

    built = build_job(job)
    backbone, datamodule, module = built.backbone, built.datamodule, built.module
    objective = module.objective
    fingerprint_start = module.record_backbone_fingerprint()
    keep_frozen_out_of_ddp(module)
    trainable, total, folded = module.num_trainable_params(), backbone.total_params(), module.num_folded_params()
    log.info("%s: trainable params %s of %s (%.4f%%), %s after folding; backbone %s, fingerprint %s",
             module.method_name, f"{trainable:,}", f"{total:,}", 100 * trainable / total,
             f"{folded:,}", backbone.name, fingerprint_start)

    prepare_wandb_env(plain.get("logger"))
    counts = {"trainable_params": trainable, "folded_params": folded, "total_params": total}
    trainer, val, test, best_path, step_seconds, val_predictions = _fit_and_test(
        job, module, datamodule, {**plain, **counts}, resume_from, backbone.quantization)
    fingerprint_end = module.verify_backbone_unchanged()

    task, cv = plain["task"], plain["cv"]
    summary = RunSummary(
        method=plain["method"]["name"],
        backbone=backbone.name,
        backbone_source=backbone.source,
        backbone_revision=backbone.revision,
        backbone_fingerprint_start=fingerprint_start,
        backbone_fingerprint_end=fingerprint_end,
        task=task["name"],
        task_type=task["type"],
        tasks=list(task["tasks"]) if task["type"] == "mixture" else None,  # in task-id order
        selection_metric=f"val/{objective.metric}",
        num_virtual_tokens=int(getattr(module, "num_virtual_tokens", 0)),
        init=getattr(module, "init", None),
        lr=float(plain["optimizer"]["lr"]) if module.trains else None,
        fold=cv["fold"] if cv["num_folds"] else None,
        num_folds=cv["num_folds"],
        seed=job.seed,
        trainable_params=trainable,
        folded_params=folded,
        total_params=total,
        val={k: v for k, v in val.items() if k != "step"},
        test=test,
        steps=int(trainer.global_step),
        best_step=int(val["step"]),
        best_checkpoint=best_path,
        wall_seconds=round(time.perf_counter() - started, 3),
        step_seconds=step_seconds,
        precision=job.precision.record(),
        quantization=backbone.quantization,
        transfer_source=job.transfer.source_task if job.transfer else None,
        transfer=job.transfer.record() if job.transfer else None,
        truncated=datamodule.truncated,
        split_sizes=datamodule.split_sizes,
        fold_split=datamodule.fold_split,
        references=datamodule.references,
        method_config=plain["method"],
        tags=list(plain.get("tags") or []),
        overrides=list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else [],
    )
    predictions = (module.test_predictions if evaluates_whole_splits(trainer)
                   else gather_objects(trainer, module.test_predictions))  # every process's share of the test set
    with module.full_trainable_tensors():
        if trainer.is_global_zero:
            # The module holds the tested (best) checkpoint's tensors: trainer.test(ckpt_path=best) loaded them.
            # One commit: metrics.json marks the run finished (resume_sweep); prompt/ appears only after it.
            artifact = run_artifact_files(module.method, plain, summary, backbone, datamodule.demonstration_ids,
                                          job.method)
            try:
                path = write_run_results(output_dir, summary, predictions, {ARTIFACT_DIR: artifact},
                                         val_predictions=val_predictions)
            except KeyboardInterrupt:
                raise Interrupted("writing the results (nothing of them was kept)") from None
            log.info("val %s | test %s | wrote %s and %s/", val, test, path, output_dir / ARTIFACT_DIR)
    return summary


def run_and_finish(cfg: DictConfig, tasks: Sequence[Any] | None = None) -> dict[str, Any]:
    """One run; its wandb run is closed even on failure, so the next run of the process starts its own."""
    try:
        return run(cfg, tasks)
    finally:
        finish_wandb()
