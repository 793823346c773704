"""Nested selection, `softprompt-report SWEEP tune=lr`: inside each fold the tuned keys are chosen by that fold's
validation, and that fold's test is what the row reports. A configuration that wins a fold's validation by noise
is credited with that fold's test only, whatever its test elsewhere; one cannot be chosen by its test score."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from softprompt.analysis.report import collect_runs, nested, summarize
from softprompt.cli.report import main

# (method, lr) -> (val/acc of folds 0, 1, 2; test/acc of folds 0, 1, 2). Prompt tuning's lr 0.3 wins fold 0's
# validation by noise (0.90) and scores 0.60 there on test; on folds 1 and 2 it loses validation but has the best
# test (0.95). Prefix tuning's two lrs tie on fold 2's validation (0.70): the natural order picks 0.001.
GRID = {
    ("prompt_tuning", 0.3): ([0.90, 0.80, 0.80], [0.60, 0.95, 0.95]),
    ("prompt_tuning", 0.01): ([0.80, 0.85, 0.85], [0.85, 0.84, 0.86]),
    ("prefix_tuning", 0.1): ([0.70, 0.75, 0.70], [0.70, 0.74, 0.72]),
    ("prefix_tuning", 0.001): ([0.72, 0.70, 0.70], [0.80, 0.70, 0.71]),
}
CHOSEN = {"prompt_tuning": [0.3, 0.01, 0.01], "prefix_tuning": [0.001, 0.1, 0.001]}


@pytest.fixture
def lr_sweep(tmp_path: Path, write_run) -> Path:
    """GRID as experiment=lr_sweep leaves it: one job per (method, lr, fold), job folders numbered."""
    root = tmp_path / "multirun"
    job = 0
    for (method, lr), (vals, tests) in GRID.items():
        for fold in range(3):
            write_run(root / str(job), method, 20, "vocab", lr, fold, 42, tests[fold], val_acc=vals[fold])
            job += 1
    return root


def expected_test(method: str) -> list[float]:
    """Each fold's test score of the lr chosen on that fold's validation."""
    return [GRID[method, lr][1][fold] for fold, lr in enumerate(CHOSEN[method])]


def test_each_folds_test_comes_from_the_lr_chosen_on_that_folds_validation(lr_sweep: Path) -> None:
    runs = collect_runs([lr_sweep]).runs
    for method in CHOSEN:
        chosen = nested([run for run in runs if run["method"] == method], ["lr"], "val/acc")
        assert [run["fold"] for run in chosen] == [0, 1, 2]
        assert [run["lr"] for run in chosen] == CHOSEN[method]
        assert [run["test/acc"] for run in chosen] == expected_test(method)
        for run in chosen:  # the choice is the validation maximum of that fold, never a test maximum
            rivals = [r for r in runs if r["method"] == method and r["fold"] == run["fold"]]
            assert run["val/acc"] == max(r["val/acc"] for r in rivals)


def test_the_report_row_estimates_the_method_with_lr_tuned(lr_sweep: Path, capsys) -> None:
    assert main([str(lr_sweep), "tune=lr"]) == 0
    table = pd.read_csv(lr_sweep / "results.csv").set_index("method")
    assert "lr" not in table.columns and set(table["tuned"]) == {"lr"}
    for method in CHOSEN:
        assert table.loc[method, "test/acc_mean"] == pytest.approx(sum(expected_test(method)) / 3)
        assert table.loc[method, "n"] == 3
    assert table.loc["prompt_tuning", "chosen_per_fold"] == "fold 0: 0.3; fold 1: 0.01; fold 2: 0.01"
    assert table.loc["prefix_tuning", "chosen_per_fold"] == "fold 0: 0.001; fold 1: 0.1; fold 2: 0.001"
    assert table.loc["prompt_tuning", "pairs_vs_best"] == 3  # the nested rows pair by fold
    markdown = (lr_sweep / "results.md").read_text()
    assert "| lr chosen per fold (on val/acc) |" in markdown
    assert "Nested selection: lr is chosen inside each fold (and seed) by that run's val/acc" in markdown
    assert "| prompt_tuning | fold 0: 0.3; fold 1: 0.01; fold 2: 0.01 | 3 |" in markdown
    assert "Nested selection" in capsys.readouterr().out


def test_fold_0s_noisy_winner_is_not_credited_with_another_lrs_test(lr_sweep: Path) -> None:
    """Without nesting, picking lr on fold 0's validation and averaging every fold's test under that lr credits
    lr 0.3 with 0.95 on folds 1 and 2. Nested, fold 0 reports lr 0.3's own fold-0 test (0.60) and folds 1, 2
    report lr 0.01's (0.84, 0.86)."""
    row = summarize(collect_runs([lr_sweep]).runs, ["method"], "test/acc", tune="lr").set_index("method")
    nested_mean = row.loc["prompt_tuning", "test/acc_mean"]
    fold0_choice_everywhere = sum(GRID["prompt_tuning", 0.3][1]) / 3
    assert nested_mean == pytest.approx((0.60 + 0.84 + 0.86) / 3) and nested_mean < fold0_choice_everywhere


def test_no_lr_can_be_chosen_by_its_test_score(lr_sweep: Path) -> None:
    """Raise every test score of the lrs that lose validation to 1.0: the choices and the rows do not move."""
    before = summarize(collect_runs([lr_sweep]).runs, ["method"], "test/acc", tune="lr")
    for path in lr_sweep.glob("*/metrics.json"):
        data = json.loads(path.read_text())
        if data["lr"] not in CHOSEN[data["method"]][data["fold"]:data["fold"] + 1]:
            path.write_text(json.dumps({**data, "test": {**data["test"], "acc": 1.0}}))
    after = summarize(collect_runs([lr_sweep]).runs, ["method"], "test/acc", tune="lr")
    assert after["chosen_per_fold"].tolist() == before["chosen_per_fold"].tolist()
    assert after["test/acc_mean"].tolist() == pytest.approx(before["test/acc_mean"].tolist())


@pytest.mark.parametrize("spelling", ["lr", "optimizer.lr"])
def test_tune_accepts_the_setting_and_its_hydra_spelling(lr_sweep: Path, spelling: str) -> None:
    assert main([str(lr_sweep), f"tune={spelling}"]) == 0
    assert set(pd.read_csv(lr_sweep / "results.csv")["tuned"]) == {"lr"}


def test_an_unknown_tune_key_is_one_line_naming_the_allowed_ones(lr_sweep: Path, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([str(lr_sweep), "tune=learning_rate"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.count("\n") == 1
    assert "unknown tune key 'learning_rate'; allowed: backbone, quantization, num_virtual_tokens, init, lr," in err
    assert not (lr_sweep / "results.csv").exists()


def test_nested_rows_use_the_chosen_runs_predictions(tmp_path: Path, predicted_run) -> None:
    labels = [i % 2 for i in range(32)]
    for fold in range(2):
        for lr, count, val in ((0.3, 28 - fold, 0.9 - fold / 5), (0.01, 24, 0.8)):
            predicted_run(tmp_path / f"{lr}_{fold}", "prompt_tuning", fold, [i < count for i in range(32)], labels,
                          val, lr=lr)
    row = summarize(collect_runs([tmp_path]).runs, ["method"], "test/acc", tune="lr").iloc[0]
    assert row["chosen_per_fold"] == "fold 0: 0.3; fold 1: 0.01"
    assert row["test/acc_mean"] == pytest.approx((28 + 24) / 64)
    assert row["test/acc_interval"] == "runs+examples" and row["test/acc_n_examples"] == 32
