"""Sweep presets as a user runs them (`softprompt-train -m experiment=NAME`), then the report on them."""

from __future__ import annotations

import json
import subprocess
import sys

import pandas as pd
import pytest

from softprompt.cli.report import main as report_main

PRESET_GRIDS = {  # preset -> swept key -> (full grid, debug=fast grid)
    "lester_ablation": {"method.num_virtual_tokens": ("1,5,20,100", "1,5"),
                        "method.init": ("random_uniform,vocab,class_labels", "random_uniform,class_labels"),
                        "cv.fold": ("range(5)", "range(5)")},
    "method_comparison": {"method": ("prompt_tuning,p_tuning,prefix_tuning,p_tuning_v2,hard_prompt",
                                     "prompt_tuning,prefix_tuning,hard_prompt"), "cv.fold": ("range(5)", "range(5)")},
    "lr_sweep": {"optimizer.lr": ("0.001,0.003,0.01,0.03,0.1,0.3", "0.01,0.3"), "cv.fold": ("range(5)", "range(5)")},
    "prefix_length": {"method.num_virtual_tokens": ("1,5,10,20,50", "1,5"), "cv.fold": ("range(5)", "range(5)")},
}


@pytest.mark.parametrize("preset", PRESET_GRIDS)
@pytest.mark.parametrize("fast", [False, True])
def test_presets_sweep_their_grid_and_debug_fast_shrinks_it(make_cfg, preset, fast):
    cfg = make_cfg([f"experiment={preset}", *(["debug=fast"] if fast else [])])
    params = dict(cfg.hydra.sweeper.params)
    assert params == {key: grids[fast] for key, grids in PRESET_GRIDS[preset].items()}
    assert cfg.cv.num_folds == 5 and preset in cfg.tags


def settings(metrics_path):
    run = json.loads(metrics_path.read_text())
    return run["num_virtual_tokens"], run["init"], run["fold"]


def test_fast_lester_ablation_runs_and_reports(tmp_path):
    """The issue's acceptance: 20 jobs (2 lengths x 2 inits x 5 folds) in one process, then softprompt-report
    gives one row per length x init, each n=5; a job killed afterwards shows up as a missing fold."""
    sweep = tmp_path / "sweep"
    result = subprocess.run([sys.executable, "-m", "softprompt.cli.train", "-m", "experiment=lester_ablation",
                             "debug=fast", "backbone=tiny_random", f"hydra.sweep.dir={sweep}"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
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

    killed = next(path.parent for path in sweep.glob("*/metrics.json") if settings(path) == (5, "class_labels", 3))
    (killed / "metrics.json").unlink()
    assert report_main([str(sweep)]) == 0
    table = (sweep / "results.md").read_text()
    assert "configuration num_virtual_tokens=5, init=class_labels is missing fold 3" in table
    assert f"`{killed}`: no metrics.json" in table


def test_a_quoted_grid_override_edits_the_grid_instead_of_sweeping_it(tmp_path):
    sweep = tmp_path / "sweep"
    result = subprocess.run([sys.executable, "-m", "softprompt.cli.train", "-m", "experiment=lester_ablation",
                             "debug=fast", "backbone=tiny_random", 'sweep.lengths="1,3"', 'sweep.inits="vocab"',
                             'sweep.folds="0"', f"hydra.sweep.dir={sweep}"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    runs = sorted((r["num_virtual_tokens"], r["init"], r["fold"])
                  for r in (json.loads(p.read_text()) for p in sweep.glob("*/metrics.json")))
    assert runs == [(1, "vocab", 0), (3, "vocab", 0)]
