"""cv.mode=all (every fold in one job, scored by the mean) and the Optuna search built on it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest import TINY, local_task_overrides
from softprompt.analysis.report import collect_runs
from softprompt.training.cv import run_job
from softprompt.training.run import run

FOLDS = ["cv=kfold", "cv.num_folds=3", "trainer.max_steps=3", "trainer.val_check_interval=3"]


def test_cv_all_folds_equal_single_fold_jobs_and_score_is_their_mean(make_cfg, local_task_files, tmp_path):
    task = local_task_overrides(local_task_files)
    job_dir = tmp_path / "all"
    score = run_job(make_cfg([*TINY, *task, *FOLDS, "cv.mode=all"], output_dir=job_dir), run)
    folds = [json.loads((job_dir / f"fold_{k}" / "metrics.json").read_text()) for k in range(3)]
    assert [f["fold"] for f in folds] == [0, 1, 2]
    for k, fold in enumerate(folds):
        alone = run(make_cfg([*TINY, *task, *FOLDS, f"cv.fold={k}"], output_dir=tmp_path / f"single{k}"))
        # float32 round-off only: a freshly loaded backbone can sum in another order than a reused one
        assert fold["val"] == pytest.approx(alone["val"], rel=1e-6)
        assert fold["test"] == pytest.approx(alone["test"], rel=1e-6)
    assert len({f["val"]["loss"] for f in folds}) == 3  # the folds really differ
    summary = json.loads((job_dir / "cv_metrics.json").read_text())
    assert score == summary["score"] == np.mean([f["val"]["acc"] for f in folds])
    assert summary["test"]["acc"] == np.mean([f["test"]["acc"] for f in folds])
    assert summary["val_std"]["acc"] == np.std([f["val"]["acc"] for f in folds], ddof=1)


def test_optuna_search_runs_trials_of_all_folds_and_prints_the_best(tmp_path: Path):
    """The issue's acceptance command, on the tiny backbone: 3 trials, each a job of 5 folds."""
    sweep = tmp_path / "optuna"
    result = subprocess.run([sys.executable, "-m", "softprompt.cli.train", "-m", "hparams_search=optuna", "debug=fast",
                             "backbone=tiny_random", "hydra.sweeper.n_trials=3", f"hydra.sweep.dir={sweep}"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=600)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    best = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert f"Best parameters: {best['best_params']}" in output
    trials = [json.loads((sweep / str(job) / "cv_metrics.json").read_text()) for job in range(3)]
    assert all(t["folds"] == [0, 1, 2, 3, 4] for t in trials)
    assert best["best_value"] == max(t["score"] for t in trials)
    collection = collect_runs([sweep])
    assert len(collection.runs) == 15 and not collection.incomplete
    for run_record in collection.runs:
        assert 1e-4 <= run_record["lr"] <= 0.3 and run_record["num_virtual_tokens"] in (1, 5, 20, 50, 100)
