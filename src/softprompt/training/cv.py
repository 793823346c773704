"""cv.mode=all: every fold of a k-fold split inside one job, scored by the mean validation metric.

Optuna (and any sweeper that optimises a job's return value) cannot average separate fold jobs, so a
trial runs its folds itself. Each fold is the same run a `cv.mode=single cv.fold=k` job would be, written
under `fold_<k>/`, so softprompt-report reads the folds like any other sweep.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from lightning.fabric.utilities.rank_zero import rank_zero_only
from omegaconf import DictConfig

from softprompt.artifacts.summary import RunSummary, read_summary
from softprompt.config.atomic import atomic_write_text
from softprompt.config.mixture import writable_copy
from softprompt.training.results import CV_METRICS_FILE, FOLD_DIR_PREFIX

log = logging.getLogger("softprompt")


def fold_configs(cfg: DictConfig) -> list[DictConfig]:
    """The runs of one job: the job itself, or (cv.mode=all) one copy per fold with its own output dir."""
    if cfg.cv.get("mode", "single") != "all":
        return [cfg]
    output_dir = Path(cfg.paths.output_dir)
    folds = []
    for fold in range(int(cfg.cv.num_folds)):
        fold_cfg = writable_copy(cfg)  # a new config per fold; the job's own is only read
        fold_cfg.cv.fold = fold
        fold_cfg.paths.output_dir = str(output_dir / f"{FOLD_DIR_PREFIX}{fold}")  # logs, checkpoints, metrics
        folds.append(fold_cfg)
    return folds


def summarize_folds(summaries: Sequence[RunSummary]) -> dict[str, Any]:
    """Mean and std over folds of every val/test metric, plus the selection metric's mean (the job's score)."""
    selection = summaries[0].selection_metric
    result: dict[str, Any] = {"selection_metric": selection, "num_folds": len(summaries),
                              "folds": [s.fold for s in summaries]}
    for stage in ("val", "test"):
        scores = [getattr(s, stage) for s in summaries]
        names = sorted(set.intersection(*(set(stage_scores) for stage_scores in scores)))
        values = {name: np.array([float(stage_scores[name]) for stage_scores in scores]) for name in names}
        result[stage] = {name: float(v.mean()) for name, v in values.items()}
        result[f"{stage}_std"] = {name: float(v.std(ddof=1)) if v.size > 1 else 0.0 for name, v in values.items()}
    result["score"] = result["val"][selection.removeprefix("val/")]
    result["wall_seconds"] = round(sum(float(s.wall_seconds) for s in summaries), 3)
    return result


def run_job(cfg: DictConfig, run_one: Callable[[DictConfig], Mapping[str, Any]]) -> float | None:
    """Run the job's fold(s) (`run_one` returns a run's metrics.json content); returns the validation selection
    metric (the fold mean under cv.mode=all). `cfg` is only read."""
    configs = fold_configs(cfg)
    summaries = [read_summary(run_one(fold_cfg)) for fold_cfg in configs]
    if cfg.cv.get("mode", "single") != "all":  # one run: its own validation metric
        return summaries[0].selection_value
    result = summarize_folds(summaries)
    if rank_zero_only.rank == 0:  # DDP workers run the same folds; one of them writes
        path = Path(cfg.paths.output_dir) / CV_METRICS_FILE
        atomic_write_text(path, json.dumps(result, indent=2) + "\n")
        log.info("cv.mode=all: mean %s over %d folds = %.4f (test %s); wrote %s", result["selection_metric"],
                 len(summaries), result["score"], result["test"], path)
    return result["score"]
