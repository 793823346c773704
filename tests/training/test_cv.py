"""cv.mode=all: every fold in one job, each fold as its single-fold job would train it, scored by the mean."""

from __future__ import annotations

import json

import numpy as np
import pytest

from softprompt.training.cv import run_job
from softprompt.training.run import run

FOLDS = ["cv=kfold", "cv.num_folds=3", "trainer.max_steps=3", "trainer.val_check_interval=3"]


def test_cv_all_folds_equal_single_fold_jobs_and_score_is_their_mean(make_cfg, tiny_overrides, local_task_overrides,
                                                                     tmp_path):
    task = [*tiny_overrides, *local_task_overrides]
    job_dir = tmp_path / "all"
    score = run_job(make_cfg([*task, *FOLDS, "cv.mode=all"], output_dir=job_dir), run)
    folds = [json.loads((job_dir / f"fold_{k}" / "metrics.json").read_text()) for k in range(3)]
    assert [f["fold"] for f in folds] == [0, 1, 2]
    for k, fold in enumerate(folds):
        alone = run(make_cfg([*task, *FOLDS, f"cv.fold={k}"], output_dir=tmp_path / f"single{k}"))
        # float32 round-off only: a freshly loaded backbone can sum in another order than a reused one
        assert fold["val"] == pytest.approx(alone["val"], rel=1e-6)
        assert fold["test"] == pytest.approx(alone["test"], rel=1e-6)
    assert len({f["val"]["loss"] for f in folds}) == 3  # the folds really differ
    summary = json.loads((job_dir / "cv_metrics.json").read_text())
    assert score == summary["score"] == np.mean([f["val"]["acc"] for f in folds])
    assert summary["test"]["acc"] == np.mean([f["test"]["acc"] for f in folds])
    assert summary["val_std"]["acc"] == np.std([f["val"]["acc"] for f in folds], ddof=1)
