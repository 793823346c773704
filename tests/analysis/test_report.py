"""softprompt-report on fake sweep dirs: grouping, statistics, paired tests, files and plots.

Configurations are chosen on validation and only reported on test; intervals stay in the metric's range; failed
jobs (failed.json) are listed. These runs saved no test predictions, so their intervals and tests are over runs
only (t intervals, exact sign-flip tests); the per-example statistics are in test_report_statistics.py, their
coverage in test_interval_coverage.py, plot checks in test_report_plots.py, argument errors in
tests/cli/test_report_cli.py."""

from __future__ import annotations

import itertools
import json
import math
import sys
import types
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from softprompt.analysis.report import collect_runs, default_group_by, summarize
from softprompt.cli.report import main
from softprompt.training.results import FAILED_FILE

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PLOTS = ("metric_vs_prompt_length.png", "method_comparison.png", "metric_vs_lr.png")
def row_for(summary: pd.DataFrame, method: str, length: int | None) -> pd.Series:
    mask = summary["method"] == method
    mask &= summary["num_virtual_tokens"].isna() if length is None else summary["num_virtual_tokens"] == length
    (index,) = np.flatnonzero(mask.to_numpy())
    return summary.iloc[index]


def test_collect_reports_incomplete_and_corrupt_jobs(fake_sweep: Path) -> None:
    collection = collect_runs([fake_sweep])
    assert len(collection.runs) == 15
    reasons = {job.path.name: job.reason for job in collection.incomplete}
    assert set(reasons) == {"15", "16"}
    assert "no metrics.json" in reasons["15"]
    assert "unreadable" in reasons["16"]


def test_cv_all_jobs_are_read_through_their_folds(tmp_path: Path, write_run) -> None:
    """cv.mode=all: one Hydra job, folds under fold_<k>/; a job that stopped early is listed with its folds."""
    for job, folds_done in (("0", 3), ("1", 2)):
        (tmp_path / job / ".hydra").mkdir(parents=True)
        for fold in range(folds_done):
            write_run(tmp_path / job / f"fold_{fold}", "prompt_tuning", 5 * (int(job) + 1), "vocab", 0.3, fold, 42,
                      0.7, hydra=False)
    (tmp_path / "0" / "cv_metrics.json").write_text("{}")
    collection = collect_runs([tmp_path])
    assert len(collection.runs) == 5
    (stopped,) = collection.incomplete
    assert stopped.path.name == "1" and "finished folds: fold_0, fold_1" in stopped.reason


def test_default_grouping_uses_varying_keys_and_pools_folds(fake_sweep: Path, sweep_accuracies) -> None:
    runs = collect_runs([fake_sweep]).runs
    group_by = default_group_by(runs)
    # method_config.* mirror the settings (no new split) and dropout is constant: none of them are keys
    assert group_by == ["method", "num_virtual_tokens", "init", "lr"]
    summary = summarize(runs, group_by, "test/acc")
    assert len(summary) == len(sweep_accuracies)
    assert summary["n"].tolist() == [3] * len(sweep_accuracies)
    assert "fold" not in summary.columns and "seed" not in summary.columns
    assert summary["test/acc_mean"].is_monotonic_decreasing
    assert tuple(summary.iloc[0][["method", "num_virtual_tokens"]]) == ("prompt_tuning", 50)


def test_default_grouping_is_method_when_nothing_varies(tmp_path: Path, write_run) -> None:
    for fold, acc in enumerate([0.7, 0.8]):
        write_run(tmp_path / str(fold), "prompt_tuning", 20, "random", 0.3, fold, 1, acc)
    assert default_group_by(collect_runs([tmp_path]).runs) == ["method"]


def t_interval_by_hand(values: list[float]) -> tuple[float, float]:
    """Runs only: mean -+ t(n-1) s / sqrt(n), clipped to [0, 1]."""
    arr = np.asarray(values)
    width = stats.t.ppf(0.975, len(arr) - 1) * arr.std(ddof=1) / math.sqrt(len(arr))
    return max(0.0, arr.mean() - width), min(1.0, arr.mean() + width)


def sign_flip_by_hand(differences: list[float]) -> float:
    d = np.asarray(differences)
    flips = [abs(np.mean(d * signs)) for signs in itertools.product((1, -1), repeat=len(d))]
    return float(np.mean([flip >= abs(d.mean()) - 1e-12 for flip in flips]))


def test_mean_std_and_runs_only_interval_match_hand_computation(fake_sweep: Path, sweep_accuracies,
                                                                 sweep_configuration: tuple) -> None:
    key = sweep_configuration
    runs = collect_runs([fake_sweep]).runs
    row = row_for(summarize(runs, default_group_by(runs), "test/acc"), key[0], key[1])
    values = np.array(sweep_accuracies[key])
    assert row["test/acc_mean"] == pytest.approx(values.mean())
    assert row["test/acc_std"] == pytest.approx(values.std(ddof=1))
    low, high = t_interval_by_hand(sweep_accuracies[key])
    assert (row["test/acc_ci_low"], row["test/acc_ci_high"]) == (pytest.approx(low), pytest.approx(high))
    assert row["test/acc_interval"] == "runs only: no test_predictions.jsonl"
    assert row["val/acc_mean"] == pytest.approx(values.mean() - 0.01)
    assert row["trainable_params_mean"] == 576 * (key[1] or 0)


def test_single_run_has_zero_std_and_no_interval(tmp_path: Path, write_run) -> None:
    write_run(tmp_path / "run", "prompt_tuning", 20, "random", 0.3, None, 1, 0.8, hydra=False)
    (row,) = summarize(collect_runs([tmp_path]).runs, ["method"], "test/acc").to_dict("records")
    assert (row["n"], row["test/acc_std"]) == (1, 0.0)
    assert math.isnan(row["test/acc_ci_low"]) and math.isnan(row["test/acc_ci_high"])
    main([str(tmp_path)])
    assert "| 0.7900 | 0.8000 |" in (tmp_path / "results.md").read_text()  # means, no interval


def test_without_predictions_the_paired_test_is_an_exact_sign_flip_over_runs(fake_sweep: Path, best_configuration,
                                                                              sweep_accuracies) -> None:
    runs = collect_runs([fake_sweep]).runs
    summary = summarize(runs, default_group_by(runs), "test/acc")
    for key in sweep_accuracies:
        row = row_for(summary, key[0], key[1])
        if key == best_configuration:
            assert row["is_best"] and math.isnan(row["p_vs_best"]) and row["pairs_vs_best"] == 3
            continue
        assert row["pairs_vs_best"] == 3 and row["test_vs_best"].startswith("sign-flip")
        differences = list(np.array(sweep_accuracies[key]) - np.array(sweep_accuracies[best_configuration]))
        assert row["diff_vs_best"] == pytest.approx(np.mean(differences))
        width = stats.t.ppf(0.975, 2) * np.std(differences, ddof=1) / math.sqrt(3)  # t over the paired differences
        assert (row["diff_vs_best_low"], row["diff_vs_best_high"]) == (
            pytest.approx(max(-1, np.mean(differences) - width)), pytest.approx(min(1, np.mean(differences) + width)))
        assert row["p_vs_best_raw"] == pytest.approx(sign_flip_by_hand(differences)) == 0.25  # 2/2^3: the least
    assert not (summary["p_vs_best"] < 0.05).any()  # three runs, no predictions: nothing can be significant


def test_one_shared_pair_gives_a_difference_but_no_evidence(tmp_path: Path, write_run) -> None:
    write_run(tmp_path / "a0", "prompt_tuning", 20, "random", 0.3, 0, 1, 0.8)
    write_run(tmp_path / "a1", "prompt_tuning", 20, "random", 0.3, 1, 1, 0.9)
    write_run(tmp_path / "b0", "prefix_tuning", 20, "random", 0.3, 0, 1, 0.5)
    write_run(tmp_path / "b2", "prefix_tuning", 20, "random", 0.3, 2, 1, 0.6)  # fold 2: no partner
    summary = summarize(collect_runs([tmp_path]).runs, ["method"], "test/acc")
    other = summary.iloc[1]
    assert other["pairs_vs_best"] == 1 and other["p_vs_best"] == 1.0 and math.isnan(other["diff_vs_best_low"])
    main([str(tmp_path)])
    markdown = (tmp_path / "results.md").read_text()
    assert "| prefix_tuning | 2 (low n) |" in markdown and "| -0.3000 p=1 |" in markdown


def test_main_writes_csv_markdown_and_plots(fake_sweep: Path, tmp_path: Path, capsys, best_configuration,
                                            sweep_accuracies) -> None:
    out = tmp_path / "report"
    assert main([str(fake_sweep), f"out={out}"]) == 0
    runs = collect_runs([fake_sweep]).runs
    expected = summarize(runs, default_group_by(runs), "test/acc")

    table = pd.read_csv(out / "results.csv")
    assert list(table.columns) == list(expected.columns)
    assert not any(column.endswith("_ci95") for column in table.columns)  # t intervals are gone
    for column in ("n", "test/acc_mean", "test/acc_std", "test/acc_ci_low", "test/acc_ci_high", "val/acc_mean",
                   "p_vs_best", "wall_seconds_mean"):
        np.testing.assert_allclose(table[column].to_numpy(float), expected[column].to_numpy(float), equal_nan=True)
    assert table["method"].tolist() == expected["method"].tolist()
    assert set(table["ranked_by"]) == {"val/acc"} and set(table["p_vs_best_on"]) == {"test/acc"}

    markdown = (out / "results.md").read_text()
    assert "ranked and chosen by val/acc (mean over folds and seeds; ties by the settings' natural order); test/acc " \
           "is reported for the configuration chosen, never used to choose" in markdown
    assert "val/acc (ranks and chooses): mean [95% CI over runs only (no validation predictions)]" in markdown
    assert "test/acc (reported): mean [95% CI over runs only (no test predictions)]" in markdown
    assert "test/acc minus best: diff [95% CI], Holm p" in markdown
    assert "test/acc minus zero-shot: diff [95% CI], Holm p" in markdown  # hard_prompt trains nothing
    best = np.array(sweep_accuracies[best_configuration])
    (val_low, val_high), (low, high) = t_interval_by_hand(list(best - 0.01)), t_interval_by_hand(list(best))
    assert f"| prompt_tuning | 50 | class_labels | 0.3 | 3 | {best.mean() - 0.01:.4f} [{val_low:.4f}, " \
           f"{val_high:.4f}] | {best.mean():.4f} [{low:.4f}, {high:.4f}] | best |" in markdown
    assert "| 28,800 | 150.0 |" in markdown
    table_rows = [line for line in markdown.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert len(table_rows) == 5 and not any("*" in line for line in table_rows)  # 3 runs, no predictions: p >= 0.25
    assert "Resolution: differences under" in markdown and "(3 runs, test examples not in the intervals)" in markdown
    incomplete = markdown.split("## Incomplete", 1)[1]
    assert "2 missing/failed job(s), 0 configuration(s) short of a fold" in incomplete
    assert str(fake_sweep / "15") in incomplete and str(fake_sweep / "16") in incomplete

    for name in PLOTS:
        assert (out / name).read_bytes()[:8] == PNG_SIGNATURE
    stdout = capsys.readouterr().out
    assert f"incomplete: {fake_sweep / '15'}" in stdout and "skipped" not in stdout
    assert "ranked and chosen by val/acc (mean over folds and seeds; ties" in stdout


def test_a_killed_job_names_the_configuration_missing_its_fold(fake_sweep: Path, capsys) -> None:
    """Fold 1 of prefix tuning at length 50 was killed: the report says so, in the table and on stdout."""
    (fake_sweep / "10" / "metrics.json").unlink()  # job 10 = 4th config, fold 1
    assert main([str(fake_sweep)]) == 0
    line = "configuration method=prefix_tuning, num_virtual_tokens=50, init=random, lr=0.01 is missing fold 1"
    assert line in capsys.readouterr().out
    markdown = (fake_sweep / "results.md").read_text()
    assert "| prefix_tuning | 50 | random | 0.01 | 2 (low n) | fold 1 |" in markdown and line in markdown
    assert markdown.count("| 3 |  |") == 4  # the other configurations have all three folds
    table = pd.read_csv(fake_sweep / "results.csv", keep_default_na=False)
    assert sorted(table["missing"]) == ["", "", "", "", "fold 1"]


def test_group_by_override_and_default_out_dir(fake_sweep: Path) -> None:
    main([str(fake_sweep), "group_by=method"])
    table = pd.read_csv(fake_sweep / "results.csv")
    assert dict(zip(table["method"], table["n"], strict=True)) == {
        "prompt_tuning": 6, "prefix_tuning": 6, "hard_prompt": 3}


def test_one_prompt_length_skips_that_plot(tmp_path: Path, capsys, write_run) -> None:
    for fold in range(2):
        write_run(tmp_path / f"a{fold}", "prompt_tuning", 20, "random", 0.3, fold, 1, 0.8 + fold / 10)
        write_run(tmp_path / f"b{fold}", "prefix_tuning", 20, "random", 0.01, fold, 1, 0.6 + fold / 10)
    main([str(tmp_path)])
    assert not (tmp_path / "metric_vs_prompt_length.png").exists()
    assert (tmp_path / "method_comparison.png").read_bytes()[:8] == PNG_SIGNATURE
    assert (tmp_path / "metric_vs_lr.png").read_bytes()[:8] == PNG_SIGNATURE
    assert "skipped metric_vs_prompt_length.png: num_virtual_tokens has 1 distinct value(s)" in capsys.readouterr().out


def test_wandb_logs_table_and_plots_offline(fake_sweep: Path, tmp_path: Path, monkeypatch, sweep_accuracies) -> None:
    calls: dict = {}

    class FakeRun:
        def log(self, data: dict) -> None:
            calls["log"] = data

        def finish(self) -> None:
            calls["finished"] = True

    fake = types.SimpleNamespace(
        init=lambda **kwargs: calls.update(init=kwargs) or FakeRun(),
        Table=lambda dataframe: ("table", len(dataframe)),
        Image=lambda path: ("image", Path(path).name),
    )
    monkeypatch.setitem(sys.modules, "wandb", fake)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    main([str(fake_sweep), f"out={tmp_path / 'out'}", "wandb=true"])
    assert calls["init"]["mode"] == "offline" and calls["finished"]
    assert calls["log"]["results"] == ("table", len(sweep_accuracies))
    assert {calls["log"][Path(name).stem] for name in PLOTS} == {("image", name) for name in PLOTS}


def test_a_loss_metric_ranks_the_lowest_first():
    runs = [{"method": m, "fold": f, "seed": 0, "val/loss": loss, "test/loss": loss, "test/acc": 0.5}
            for f in range(2) for m, loss in (("high", 2.0 + f), ("low", 1.0 + f))]
    assert summarize(runs, ["method"], "test/loss", "test/loss")["method"].tolist() == ["low", "high"]
    assert summarize(runs, ["method"], "test/acc", "val/loss")["method"].tolist() == ["low", "high"]


# ------------------------------------------------------------------------------- choosing on validation, not test

# (length, val/acc per fold, test/acc per fold). A (length 5): val mean 0.91, test mean 0.61; B (length 50): val
# 0.71, test 0.81. Choosing on test would pick B.
A_AND_B = ((5, [0.90, 0.92], [0.60, 0.62]), (50, [0.70, 0.72], [0.79, 0.83]))


@pytest.fixture
def val_test_disagree(tmp_path: Path, write_run) -> Path:
    """Two configurations x 2 folds whose validation and test scores disagree on which is better."""
    root = tmp_path / "multirun"
    for index, (length, val_accs, accs) in enumerate(A_AND_B):
        for fold in range(2):
            write_run(root / str(2 * index + fold), "prompt_tuning", length, "vocab", 0.3, fold, 42, accs[fold],
                      val_acc=val_accs[fold], num_folds=2)
    return root


def test_the_configuration_best_on_validation_is_chosen_and_its_test_score_reported(val_test_disagree: Path,
                                                                                     capsys) -> None:
    assert main([str(val_test_disagree)]) == 0
    table = pd.read_csv(val_test_disagree / "results.csv")
    best = table[table["is_best"]]
    assert best["num_virtual_tokens"].tolist() == [5]  # A, chosen on validation
    assert best["test/acc_mean"].iloc[0] == pytest.approx(0.61)  # A's own test score is what is reported
    assert not table[table["num_virtual_tokens"] == 50]["is_best"].iloc[0]  # B is better on test, and not chosen
    markdown = (val_test_disagree / "results.md").read_text()
    rows = [line for line in markdown.splitlines() if line.startswith("| 5 |") or line.startswith("| 50 |")]
    t_width = stats.t.ppf(0.975, 1) * 0.01  # two folds: t with 1 df on their spread (sd 0.0141 / sqrt 2)
    assert rows[0].startswith(f"| 5 | 2 (low n) | 0.9100 [{0.91 - t_width:.4f}, 1.0000] | 0.6100 "
                              f"[{0.61 - t_width:.4f}, {0.61 + t_width:.4f}] | best |")
    assert "| best |" not in rows[1]
    assert "Ranked by test" not in markdown and "Ranked by test" not in capsys.readouterr().out


def test_ranking_by_test_is_possible_only_on_request_and_is_flagged(val_test_disagree: Path, capsys) -> None:
    assert main([str(val_test_disagree), "rank_by=test/acc"]) == 0
    table = pd.read_csv(val_test_disagree / "results.csv")
    assert table[table["is_best"]]["num_virtual_tokens"].tolist() == [50]  # B
    warning = "**Ranked by test/acc at the user's request: choosing on the test set overestimates the chosen " \
              "configuration's score.**"
    markdown = (val_test_disagree / "results.md").read_text()
    assert warning in markdown.split("| num_virtual_tokens", 1)[0]  # in the intro, above the table
    assert "test/acc (RANKED ON TEST at the user's request): mean [95% CI over runs only (no test predictions)]" \
        in markdown
    assert warning in capsys.readouterr().out


def test_the_paired_test_compares_the_validation_choice_on_the_reported_metric(val_test_disagree: Path) -> None:
    runs = collect_runs([val_test_disagree]).runs
    summary = summarize(runs, ["num_virtual_tokens"], "test/acc")
    assert summary["num_virtual_tokens"].tolist() == [5, 50]
    other = summary.iloc[1]
    assert other["pairs_vs_best"] == 2
    assert other["diff_vs_best"] == pytest.approx(np.mean(A_AND_B[1][2]) - np.mean(A_AND_B[0][2]))
    assert other["p_vs_best_raw"] == 0.5  # both folds favour B: 2 of the 4 sign patterns are as extreme


def test_runs_without_validation_metrics_are_ranked_last_and_counted(tmp_path: Path, capsys, write_run) -> None:
    for fold in range(2):
        write_run(tmp_path / f"old{fold}", "prefix_tuning", 20, "random", 0.01, fold, 1, 0.95, with_val=False)
        write_run(tmp_path / f"new{fold}", "prompt_tuning", 20, "random", 0.3, fold, 1, 0.70 + fold / 100)
    assert main([str(tmp_path)]) == 0
    table = pd.read_csv(tmp_path / "results.csv")
    assert table["method"].tolist() == ["prompt_tuning", "prefix_tuning"]  # despite prefix tuning's test score
    assert table["is_best"].tolist() == [True, False]
    note = "1 configuration(s) had no val/acc"
    assert note in (tmp_path / "results.md").read_text() and note in capsys.readouterr().out


def test_no_configuration_is_chosen_when_none_has_the_ranking_metric(tmp_path: Path, capsys, write_run) -> None:
    for fold in range(2):
        for method, acc in (("prefix_tuning", 0.9), ("prompt_tuning", 0.7)):
            write_run(tmp_path / f"{method}{fold}", method, 20, "random", 0.3, fold, 1, acc, with_val=False)
    assert main([str(tmp_path)]) == 0
    table = pd.read_csv(tmp_path / "results.csv")
    assert not table["is_best"].any()
    assert "No configuration has val/acc" in capsys.readouterr().out


# ------------------------------------------------------------------------------------------ runs-only intervals


@pytest.mark.parametrize("values", [[0.02, 0.99], [0.0, 1.0, 1.0], [0.5, 0.51, 0.97, 0.03, 0.6]])
def test_runs_only_intervals_stay_within_the_range_and_are_deterministic(tmp_path: Path, values: list[float],
                                                                         write_run) -> None:
    for fold, acc in enumerate(values):
        write_run(tmp_path / str(fold), "prompt_tuning", 20, "random", 0.3, fold, 1, acc)
    summary = summarize(collect_runs([tmp_path]).runs, ["method"], "test/acc")
    low, high = summary.iloc[0][["test/acc_ci_low", "test/acc_ci_high"]]
    assert 0.0 <= low <= summary.iloc[0]["test/acc_mean"] <= high <= 1.0
    assert (low, high) == pytest.approx(t_interval_by_hand(values))
    again = summarize(collect_runs([tmp_path]).runs, ["method"], "test/acc")
    assert (again.iloc[0]["test/acc_ci_low"], again.iloc[0]["test/acc_ci_high"]) == (low, high)  # deterministic


def test_identical_runs_without_predictions_get_no_zero_width_interval(tmp_path: Path, write_run) -> None:
    """Two runs with the same score and no per-example outcomes: nothing says how far the truth may be (the old
    fold bootstrap printed [0.7656, 0.7656]); the table shows the mean alone."""
    for fold in range(2):
        write_run(tmp_path / str(fold), "prompt_tuning", 20, "random", 0.3, fold, 1, 0.7656)
    row = summarize(collect_runs([tmp_path]).runs, ["method"], "test/acc").iloc[0]
    assert math.isnan(row["test/acc_ci_low"]) and math.isnan(row["test/acc_ci_high"])


def test_two_far_apart_folds_give_the_whole_range_not_their_range(tmp_path: Path, write_run) -> None:
    """Two folds at 0.2 and 0.99: the t interval with 1 df spans all of [0, 1] (clipped), where the old bootstrap
    claimed [0.2, 0.99] at '95%'."""
    values = [0.2, 0.99]
    for fold, acc in enumerate(values):
        write_run(tmp_path / str(fold), "prompt_tuning", 20, "random", 0.3, fold, 1, acc)
    row = summarize(collect_runs([tmp_path]).runs, ["method"], "test/acc").iloc[0]
    assert (row["test/acc_ci_low"], row["test/acc_ci_high"]) == (0.0, 1.0)


# ------------------------------------------------------------------------------------------------------ failed jobs


def write_failure(job_dir: Path, error: str, overrides: list[str]) -> None:
    """failed.json as the training side leaves it in a Hydra job folder that raised."""
    (job_dir / ".hydra").mkdir(parents=True, exist_ok=True)
    (job_dir / FAILED_FILE).write_text(json.dumps({"error": error, "error_type": "ConfigError",
                                                   "overrides": overrides, "job_num": int(job_dir.name)}))


def test_a_failed_job_is_listed_with_its_error_and_overrides(fake_sweep: Path, capsys) -> None:
    error = "method.init='bogus' is invalid: allowed: random_uniform, vocab, class_labels"
    write_failure(fake_sweep / "17", error, ["method.init=bogus", "cv.fold=2"])
    assert main([str(fake_sweep)]) == 0
    line = f"failed: {error} (overrides: method.init=bogus cv.fold=2)"
    incomplete = (fake_sweep / "results.md").read_text().split("## Incomplete", 1)[1]
    assert f"- `{fake_sweep / '17'}`: {line}" in incomplete
    assert "3 missing/failed job(s)" in incomplete
    stdout = capsys.readouterr().out
    assert f"  incomplete: {fake_sweep / '17'}: {line}" in stdout
    assert "15 runs collected; 3 incomplete job(s)" in stdout


def test_metrics_json_beside_a_stale_failed_json_counts_as_finished(fake_sweep: Path) -> None:
    # job 0 has metrics.json
    write_failure(fake_sweep / "0", "an earlier attempt raised", ["method.num_virtual_tokens=5"])
    collection = collect_runs([fake_sweep])
    assert len(collection.runs) == 15
    assert fake_sweep / "0" not in {job.path for job in collection.incomplete}


def test_an_unreadable_failed_json_is_still_listed(tmp_path: Path, write_run) -> None:
    write_run(tmp_path / "0", "prompt_tuning", 20, "random", 0.3, 0, 1, 0.8)
    (tmp_path / "1" / ".hydra").mkdir(parents=True)
    (tmp_path / "1" / FAILED_FILE).write_text("{half")
    (job,) = collect_runs([tmp_path]).incomplete
    assert job.path.name == "1" and job.reason.startswith("failed (unreadable failed.json")
