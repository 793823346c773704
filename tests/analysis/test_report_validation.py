"""softprompt-report's validation intervals from each run's val_predictions.jsonl: k-fold runs validate on disjoint
examples (nested in the runs: the run spread holds validation sampling, never below it), runs on one validation
split are crossed like test, a fold's seeds are one unit; runs without the file keep a t interval over runs. Every
metric, corpus-level ones included, gets an interval for one run and for several."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from softprompt.analysis.report import collect_runs, summarize
from softprompt.cli.report import main

M = 24  # validation examples per fold
LABELS = [i % 2 for i in range(M)]


def right(count: int, start: int = 0) -> list[bool]:
    """Examples start..start+count-1 (cyclically) right, the others wrong."""
    return [(i - start) % M < count for i in range(M)]


@pytest.fixture
def validated(validation_predictions):
    """`validated(run_dir, correct, fold)`: the run's validation predictions on fold `fold`'s own examples (row
    indices of that fold; one split for None)."""
    def make(run_dir: Path, correct: list[bool], fold: int | None) -> Path:
        return validation_predictions(run_dir, LABELS, correct, first_row=(fold or 0) * M)

    return make


def summary_of(root: Path, metric: str = "test/acc", **kwargs) -> pd.DataFrame:
    return summarize(collect_runs([root]).runs, ["method"], metric, **kwargs)


def by_hand(correct: list[list[bool]], sets: list[int]) -> tuple[float, float]:
    """The nested interval: sets (folds) as units, each the mean of its runs, weighted by its share of the runs;
    t(F-1) on their spread, never below validation sampling alone (t over all examples)."""
    y, labels = np.array(correct, dtype=float), np.array(sets)
    folds = sorted(set(sets))
    weights = np.array([np.mean(labels == f) for f in folds])
    means = np.array([y[labels == f].mean() for f in folds])
    estimate = y.mean()
    runs = len(folds) / (len(folds) - 1) * np.sum(weights ** 2 * (means - estimate) ** 2)
    floor = np.sum(weights ** 2 * np.array([y[labels == f].mean(axis=0).var(ddof=1) / M for f in folds]))
    width = max(stats.t.ppf(0.975, len(folds) - 1) * math.sqrt(runs),
                stats.t.ppf(0.975, M * len(folds) - 1) * math.sqrt(floor))
    return max(0.0, estimate - width), min(1.0, estimate + width)


def test_k_fold_validation_is_nested_the_run_spread_with_validation_sampling_as_its_floor(
        tmp_path: Path, predicted_run, validated) -> None:
    correct = [right(14), right(18, 3), right(21, 7)]
    for fold, mask in enumerate(correct):
        run = predicted_run(tmp_path / str(fold), "prompt_tuning", fold, right(20), LABELS, 0.0, num_folds=3)
        validated(run, mask, fold)
    row = summary_of(tmp_path).iloc[0]
    assert (row["val/acc_ci_low"], row["val/acc_ci_high"]) == tuple(map(pytest.approx, by_hand(correct, [0, 1, 2])))
    assert row["val/acc_interval"] == "runs+examples nested" and row["val/acc_n_examples"] == 3 * M
    # the runs' spread is the whole of it here: the t interval over the three fold scores
    scores = np.array(correct, dtype=float).mean(axis=1)
    t_width = stats.t.ppf(0.975, 2) * scores.std(ddof=1) / math.sqrt(3)
    assert row["val/acc_ci_high"] == pytest.approx(min(1, scores.mean() + t_width))
    assert main([str(tmp_path)]) == 0
    markdown = (tmp_path / "results.md").read_text()
    assert "val/acc (ranks and chooses): mean [95% CI over runs and validation examples, each fold its own]" in markdown
    assert "test/acc (reported): mean [95% CI over runs and test examples]" in markdown


def test_folds_that_agree_keep_validation_sampling_in_their_interval(tmp_path: Path, predicted_run, validated) -> None:
    """Three folds with the same score: the run spread is 0, the interval is validation sampling alone."""
    correct = [right(18), right(18, 5), right(18, 11)]
    for fold, mask in enumerate(correct):
        validated(predicted_run(tmp_path / str(fold), "prompt_tuning", fold, right(20), LABELS, 0.0, num_folds=3),
                  mask, fold)
    row = summary_of(tmp_path).iloc[0]
    low, high = by_hand(correct, [0, 1, 2])
    assert high - low > 0.1 and (row["val/acc_ci_low"], row["val/acc_ci_high"]) == (pytest.approx(low),
                                                                                     pytest.approx(high))


def test_a_folds_seeds_share_its_examples_and_count_as_one_unit(tmp_path: Path, predicted_run, validated) -> None:
    correct, sets = [right(14), right(16, 2), right(19, 3), right(20, 9), right(22, 1), right(17, 4)], []
    for index, mask in enumerate(correct):
        fold, seed = divmod(index, 2)
        run = predicted_run(tmp_path / str(index), "prompt_tuning", fold, right(20), LABELS, 0.0, seed=seed,
                            num_folds=3)
        validated(run, mask, fold)
        sets.append(fold)
    row = summary_of(tmp_path).iloc[0]
    assert (row["val/acc_ci_low"], row["val/acc_ci_high"]) == tuple(map(pytest.approx, by_hand(correct, sets)))


def test_runs_on_one_validation_split_are_crossed_like_test(tmp_path: Path, predicted_run, validated) -> None:
    """No k-fold: every seed validates on the same examples, so their sampling is shared, as for test."""
    for seed, mask in enumerate([right(14), right(18, 3), right(21, 7)]):
        run = predicted_run(tmp_path / str(seed), "prompt_tuning", None, right(20), LABELS, 0.0, seed=seed)
        validated(run, mask, None)
    row = summary_of(tmp_path).iloc[0]
    assert row["val/acc_interval"] == "runs+examples" and row["val/acc_n_examples"] == M


def test_one_run_gets_validation_sampling_only_and_says_so(tmp_path: Path, predicted_run, validated) -> None:
    mask = right(17)
    validated(predicted_run(tmp_path / "a", "prompt_tuning", 0, right(20), LABELS, 0.0), mask, 0)
    row = summary_of(tmp_path).iloc[0]
    y = np.array(mask, dtype=float)
    width = stats.t.ppf(0.975, M - 1) * y.std(ddof=1) / math.sqrt(M)
    assert (row["val/acc_ci_low"], row["val/acc_ci_high"]) == (pytest.approx(y.mean() - width),
                                                               pytest.approx(y.mean() + width))
    assert main([str(tmp_path)]) == 0
    assert "val/acc (ranks and chooses): mean [95% CI over validation examples only (one run)]" in \
        (tmp_path / "results.md").read_text()


def test_rows_without_validation_predictions_keep_the_interval_over_runs_and_are_marked(
        tmp_path: Path, predicted_run, validated) -> None:
    for fold in range(3):
        validated(predicted_run(tmp_path / f"a{fold}", "prompt_tuning", fold, right(22), LABELS, 0.0, num_folds=3),
                  right(16 + fold), fold)
        predicted_run(tmp_path / f"b{fold}", "prefix_tuning", fold, right(20), LABELS, 0.6 + fold / 20, num_folds=3)
    table = summary_of(tmp_path).set_index("method")
    assert table["val/acc_interval"]["prefix_tuning"] == "runs only: no val_predictions.jsonl"
    values = np.array([0.6, 0.65, 0.7])
    width = stats.t.ppf(0.975, 2) * values.std(ddof=1) / math.sqrt(3)
    assert table["val/acc_ci_low"]["prefix_tuning"] == pytest.approx(values.mean() - width)
    assert main([str(tmp_path)]) == 0
    markdown = (tmp_path / "results.md").read_text()
    assert "‡ val/acc: over runs only: no usable val_predictions.jsonl" in markdown


def test_validation_sets_that_overlap_without_being_equal_fall_back_to_runs(tmp_path: Path, predicted_run,
                                                                          validation_predictions) -> None:
    """Folds from different splits (another cv.seed) share some examples: neither crossed nor nested."""
    for index, first in enumerate((0, M // 2)):
        run = predicted_run(tmp_path / str(index), "prompt_tuning", index, right(20), LABELS, 0.0)
        validation_predictions(run, LABELS, right(15 + index), first_row=first)
    row = summary_of(tmp_path).iloc[0]
    assert row["val/acc_interval"] == "runs only: the runs' predictions cover overlapping but different examples"


def test_comparing_on_validation_pairs_by_fold_on_each_folds_own_examples(tmp_path: Path, predicted_run,
                                                                          validated) -> None:
    """metric=val/acc: pairs share their fold's examples; the folds' differences are nested like the scores."""
    for fold in range(3):
        validated(predicted_run(tmp_path / f"a{fold}", "prompt_tuning", fold, right(20), LABELS, 0.0, num_folds=3),
                  right(20 - fold), fold)
        validated(predicted_run(tmp_path / f"b{fold}", "prefix_tuning", fold, right(20), LABELS, 0.0, num_folds=3),
                  right(14 + fold, 2), fold)
    other = summary_of(tmp_path, "val/acc").set_index("method").loc["prefix_tuning"]
    assert other["test_vs_best"] == "paired over runs and validation examples (nested: each fold its own)"
    differences = [(14 + fold - (20 - fold)) / M for fold in range(3)]
    assert other["diff_vs_best"] == pytest.approx(np.mean(differences))
    assert other["diff_vs_best_low"] < other["diff_vs_best"] < other["diff_vs_best_high"]


@pytest.mark.parametrize("stage", ["test", "val"])
@pytest.mark.parametrize("folds", [1, 3])
def test_every_metric_gets_an_interval_for_one_run_and_for_several_macro_f1_included(
        tmp_path: Path, predicted_run, validated, stage: str, folds: int) -> None:
    for fold in range(folds):
        run = predicted_run(tmp_path / str(fold), "prompt_tuning", fold, right(17 + fold, fold), LABELS, 0.0,
                            num_folds=3)
        validated(run, right(15 + 2 * fold, fold), fold)
    row = summary_of(tmp_path).iloc[0]
    for name in ("acc", "f1"):
        metric = f"{stage}/{name}"
        assert row[f"{metric}_ci_low"] < row[f"{metric}_mean"] < row[f"{metric}_ci_high"], metric
        assert not row[f"{metric}_interval"].startswith("runs only"), (metric, row[f"{metric}_interval"])
