"""Sweeps as a user runs them (`softprompt-train -m ...`): a preset's grid in one process, then the report on it;
grid overrides; the Optuna search over jobs of all folds."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml

from softprompt.analysis.report import collect_runs
from softprompt.cli.report import main as report_main


def settings(metrics_path):
    run = json.loads(metrics_path.read_text())
    return run["num_virtual_tokens"], run["init"], run["fold"]


@pytest.mark.xdist_group("lester_ablation")
def test_fast_lester_ablation_runs_and_reports(fast_lester_ablation, tmp_path):
    """20 jobs (2 lengths x 2 inits x 5 folds) in one process, then softprompt-report gives one row per
    length x init, each n=5; a job killed afterwards shows up as a missing fold."""
    result = fast_lester_ablation.result
    assert result.returncode == 0, result.stderr[-3000:]
    sweep = fast_lester_ablation.copy(tmp_path / "sweep")  # the report writes into it, and a job gets killed
    runs = [json.loads(p.read_text()) for p in sweep.glob("*/metrics.json")]
    assert len(runs) == 20
    assert {(r["num_virtual_tokens"], r["init"], r["fold"]) for r in runs} == {
        (n, i, f) for n in (1, 5) for i in ("random_uniform", "class_labels") for f in range(5)}
    assert (result.stdout + result.stderr).count("reusing the copy loaded by an earlier job") == 19  # one load
    assert report_main([str(sweep)]) == 0
    table = pd.read_csv(sweep / "results.csv")
    assert sorted(zip(table["num_virtual_tokens"], table["init"], table["n"], strict=True)) == [
        (1, "class_labels", 5), (1, "random_uniform", 5), (5, "class_labels", 5), (5, "random_uniform", 5)]
    assert (sweep / "metric_vs_prompt_length.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # every run's saved predictions reproduce its metrics.json: test examples crossed with the runs, each fold's own
    # validation examples nested in its run, for every metric (the verbalizer loss included)
    for name in ("acc", "f1", "loss"):
        assert set(table[f"test/{name}_interval"]) == {"runs+examples"}, name
        assert set(table[f"val/{name}_interval"]) == {"runs+examples nested"}, name
    assert "val/acc (ranks and chooses): mean [95% CI over runs and validation examples, each fold its own]" in \
        (sweep / "results.md").read_text()

    killed = next(path.parent for path in sweep.glob("*/metrics.json") if settings(path) == (5, "class_labels", 3))
    (killed / "metrics.json").unlink()
    assert report_main([str(sweep)]) == 0
    table = (sweep / "results.md").read_text()
    assert "configuration num_virtual_tokens=5, init=class_labels is missing fold 3" in table
    assert f"`{killed}`: no metrics.json" in table


def test_a_quoted_grid_override_edits_the_grid_instead_of_sweeping_it(tmp_path, softprompt_train):
    sweep = tmp_path / "sweep"
    result = softprompt_train("-m", "experiment=lester_ablation", "debug=fast", "backbone=tiny_random",
                              'sweep.lengths="1,3"', 'sweep.inits="vocab"', 'sweep.folds="0"',
                              f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    runs = sorted((r["num_virtual_tokens"], r["init"], r["fold"])
                  for r in (json.loads(p.read_text()) for p in sweep.glob("*/metrics.json")))
    assert runs == [(1, "vocab", 0), (3, "vocab", 0)]


def test_optuna_search_runs_trials_of_all_folds_and_prints_the_best(tmp_path: Path, softprompt_train):
    """`softprompt-train -m hparams_search=optuna debug=fast` on the tiny backbone: 3 trials, each a job of 5
    folds (cv.mode=all), the best trial's parameters printed and saved."""
    sweep = tmp_path / "optuna"
    result = softprompt_train("-m", "hparams_search=optuna", "debug=fast", "backbone=tiny_random",
                              "hydra.sweeper.n_trials=3", f"hydra.sweep.dir={sweep}", cwd=tmp_path)
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
