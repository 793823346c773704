"""softprompt-report's statistics on runs that saved their test predictions: intervals over runs AND test examples,
paired comparisons on the same runs and examples (Holm-corrected, never p ~ 0 from a degenerate variance), exact
McNemar for single runs, the zero-shot comparison, the resolution line, deterministic ties, corpus-level metrics."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats
from torchmetrics.text import SacreBLEUScore
from torchmetrics.text.rouge import ROUGEScore

from softprompt.analysis.report import collect_runs, summarize
from softprompt.analysis.report.outcomes import Unavailable, run_outcomes
from softprompt.cli.report import main

N = 32
LABELS = [i % 2 for i in range(N)]


def right(count: int, start: int = 0) -> list[bool]:
    """Examples start..start+count-1 (cyclically) right, the others wrong."""
    return [(i - start) % N < count for i in range(N)]


def table_rows(markdown: str) -> list[str]:
    return [line for line in markdown.splitlines() if line.startswith("| ") and "---" not in line][1:]


def summary_of(root: Path, metric: str = "test/acc", **kwargs) -> pd.DataFrame:
    return summarize(collect_runs([root]).runs, ["method"], metric, **kwargs)


# ------------------------------------------------------------------ equal fold differences: no false significance


@pytest.fixture
def equal_differences(tmp_path: Path, predicted_run) -> Path:
    """Two folds with equal differences: A scores [.8125, .84375] and B [.78125, .8125] on 32 examples; on each
    fold A gets one example more right. A t-test over folds has zero variance (scipy: p ~ 0, a `*`)."""
    for fold, (a, b) in enumerate([(26, 25), (27, 26)]):
        predicted_run(tmp_path / f"a{fold}", "prompt_tuning", fold, right(a), LABELS, 0.85)
        predicted_run(tmp_path / f"b{fold}", "prefix_tuning", fold, right(b), LABELS, 0.80)
    return tmp_path


def test_equal_fold_differences_print_no_star(equal_differences: Path) -> None:
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scipy warns of the zero variance it then reports p ~ 0 from
        old = stats.ttest_rel([0.8125, 0.84375], [0.78125, 0.8125]).pvalue
    assert math.isnan(old) or old < 0.05  # what the report used to print a `*` from
    assert main([str(equal_differences)]) == 0
    table = pd.read_csv(equal_differences / "results.csv")
    other = table[~table["is_best"]].iloc[0]
    assert other["diff_vs_best"] == pytest.approx(-1 / 32)
    assert other["diff_vs_best_low"] < 0 < other["diff_vs_best_high"]  # the examples' sampling is in it
    assert other["p_vs_best_raw"] > 0.05 and other["test_vs_best"] == "paired over runs and test examples"
    markdown = (equal_differences / "results.md").read_text()
    assert not any("*" in row for row in table_rows(markdown))


def test_equal_fold_differences_without_predictions_print_no_star_either(equal_differences: Path) -> None:
    for path in equal_differences.glob("*/test_predictions.jsonl"):
        path.unlink()
    assert main([str(equal_differences)]) == 0
    other = pd.read_csv(equal_differences / "results.csv").iloc[1]
    assert other["p_vs_best_raw"] == 0.5 and other["test_vs_best"].startswith("sign-flip")  # 2 of 4 patterns
    assert not any("*" in row for row in table_rows((equal_differences / "results.md").read_text()))


# ----------------------------------------------------------------------------------- intervals, by hand


def test_the_interval_is_the_crossed_decomposition_by_hand(tmp_path: Path, predicted_run) -> None:
    correct = [right(20, 0), right(24, 5), right(27, 9)]
    for fold, mask in enumerate(correct):
        predicted_run(tmp_path / str(fold), "prompt_tuning", fold, mask, LABELS, 0.8, num_folds=3)
    row = summary_of(tmp_path).iloc[0]
    y = np.array(correct, dtype=float)
    n = len(y)
    runs = y.mean(axis=1).var(ddof=1) / n
    residual = y - y.mean(axis=1, keepdims=True) - y.mean(axis=0) + y.mean()
    interaction = (residual ** 2).sum() / ((n - 1) * (N - 1))
    examples = max(y.mean(axis=0).var(ddof=1) / N - interaction / (n * N), 0)
    width = math.sqrt(stats.t.ppf(0.975, n - 1) ** 2 * runs + stats.t.ppf(0.975, N - 1) ** 2 * examples)
    assert (row["test/acc_ci_low"], row["test/acc_ci_high"]) == (
        pytest.approx(max(0, y.mean() - width)), pytest.approx(min(1, y.mean() + width)))
    assert row["test/acc_interval"] == "runs+examples" and row["test/acc_n_examples"] == N
    assert row["val/acc_interval"] == "runs only: no val_predictions.jsonl"  # these runs saved none


def test_identical_runs_get_the_test_sampling_interval_not_zero_width(tmp_path: Path, predicted_run) -> None:
    """A zero-shot prompt scores the same on every fold: its interval is test-set sampling (the old bootstrap
    printed [0.7109, 0.7109])."""
    for fold in range(3):
        predicted_run(tmp_path / str(fold), "hard_prompt", fold, right(23), LABELS, 0.7, length=None, lr=None,
                      num_folds=3)
    row = summary_of(tmp_path).iloc[0]
    y = np.array(right(23), dtype=float)
    width = stats.t.ppf(0.975, N - 1) * y.std(ddof=1) / math.sqrt(N)
    assert (row["test/acc_ci_low"], row["test/acc_ci_high"]) == (pytest.approx(y.mean() - width),
                                                                 pytest.approx(y.mean() + width))


def test_one_run_is_flagged_and_covers_test_sampling_only(tmp_path: Path, predicted_run) -> None:
    predicted_run(tmp_path / "a", "prompt_tuning", None, right(25), LABELS, 0.8)
    predicted_run(tmp_path / "b", "prefix_tuning", None, right(20), LABELS, 0.7)
    assert main([str(tmp_path)]) == 0
    markdown = (tmp_path / "results.md").read_text()
    assert "test/acc (reported): mean [95% CI over test examples only (one run)]" in markdown
    assert "| prompt_tuning | 1 (one run) |" in markdown and "**Low n:**" in markdown


def test_predictions_that_do_not_reproduce_metrics_json_are_not_used(tmp_path: Path, predicted_run) -> None:
    for fold in range(2):
        predicted_run(tmp_path / f"a{fold}", "prompt_tuning", fold, right(25 + fold), LABELS, 0.8)
        run = predicted_run(tmp_path / f"b{fold}", "prefix_tuning", fold, right(20 + fold), LABELS, 0.7)
    data = json.loads((run / "metrics.json").read_text())
    (run / "metrics.json").write_text(json.dumps({**data, "test": {**data["test"], "acc": 0.5}}))
    with pytest.raises(Unavailable, match=r"metrics\.json says 0\.5"):
        run_outcomes(collect_runs([run]).runs[0], "test/acc")
    assert main([str(tmp_path)]) == 0
    table = pd.read_csv(tmp_path / "results.csv")
    assert table.set_index("method")["test/acc_interval"]["prefix_tuning"].startswith("runs only: ")
    markdown = (tmp_path / "results.md").read_text()
    assert "‡ test/acc: over runs only" in markdown  # the row is marked; the header names the others' kind


# -------------------------------------------------------------------------------------------- comparisons


def test_identical_predictions_differ_by_zero_with_p_one(tmp_path: Path, predicted_run) -> None:
    for fold in range(2):
        predicted_run(tmp_path / f"a{fold}", "prompt_tuning", fold, right(25, fold), LABELS, 0.8)
        predicted_run(tmp_path / f"b{fold}", "prefix_tuning", fold, right(25, fold), LABELS, 0.7)
    other = summary_of(tmp_path).iloc[1]
    assert (other["diff_vs_best"], other["diff_vs_best_low"], other["diff_vs_best_high"]) == (0, 0, 0)
    assert other["p_vs_best_raw"] == other["p_vs_best"] == 1.0


def test_single_runs_are_compared_by_exact_mcnemar(tmp_path: Path, predicted_run) -> None:
    """One run each: a binomial test on the discordant examples (A right and B wrong: 6; B right and A wrong: 1)."""
    predicted_run(tmp_path / "a", "prompt_tuning", None, right(26), LABELS, 0.8)
    predicted_run(tmp_path / "b", "prefix_tuning", None, [i < 20 or i == 30 for i in range(N)], LABELS, 0.7)
    other = summary_of(tmp_path).iloc[1]
    assert other["test_vs_best"] == "exact McNemar (one run each)"
    assert other["p_vs_best_raw"] == pytest.approx(stats.binomtest(1, 7, 0.5).pvalue)
    assert other["diff_vs_best"] == pytest.approx(-5 / 32)


def test_holm_corrects_every_comparison_in_the_table_including_zero_shot(tmp_path: Path, predicted_run) -> None:
    scores = {"prompt_tuning": (29, 0.9), "prefix_tuning": (27, 0.85), "p_tuning": (24, 0.8)}
    for fold in range(3):
        for method, (count, val) in scores.items():
            predicted_run(tmp_path / f"{method}{fold}", method, fold, right(count - fold, 2 * fold), LABELS, val,
                          num_folds=3)
        predicted_run(tmp_path / f"zero{fold}", "hard_prompt", fold, right(16), LABELS, 0.5, length=None, lr=None,
                      num_folds=3)
    assert main([str(tmp_path)]) == 0
    table = pd.read_csv(tmp_path / "results.csv")
    raw = [*table["p_vs_best_raw"], *table["p_vs_zero_shot_raw"]]
    finite = sorted(p for p in raw if not math.isnan(p))
    assert len(finite) == 6  # 3 against the best, 3 against zero-shot
    expected, running = {}, 0.0
    for rank, p in enumerate(finite):
        running = max(running, min(1.0, (len(finite) - rank) * p))
        expected[p] = running
    for column in ("best", "zero_shot"):
        for p_raw, p_holm in zip(table[f"p_vs_{column}_raw"], table[f"p_vs_{column}"], strict=True):
            assert (math.isnan(p_raw) and math.isnan(p_holm)) or p_holm == pytest.approx(expected[p_raw])
    zero_shot = table.set_index("method").loc["prompt_tuning"]
    assert zero_shot["diff_vs_zero_shot"] > 0.3 and zero_shot["p_vs_zero_shot"] < 0.05
    markdown = (tmp_path / "results.md").read_text()
    assert "Holm-corrected over the 6 comparisons in this table" in markdown
    assert "test/acc minus zero-shot: diff [95% CI], Holm p" in markdown


def test_the_resolution_line_is_the_median_paired_half_width(tmp_path: Path, predicted_run) -> None:
    for fold in range(2):
        for method, count in (("prompt_tuning", 28), ("prefix_tuning", 24), ("p_tuning", 20)):
            predicted_run(tmp_path / f"{method}{fold}", method, fold, right(count + fold, fold), LABELS,
                          count / 32)
    assert main([str(tmp_path)]) == 0
    table = pd.read_csv(tmp_path / "results.csv")
    points = 100 * float(np.median(table["half_width_vs_best"].dropna()))
    assert f"Resolution: differences under {points:.1f} points are not resolved at this n (2 runs, 32 test " \
           "examples)" in (tmp_path / "results.md").read_text()


# ------------------------------------------------------------------------------------------------------ ties


def test_ties_go_to_the_natural_order_of_the_settings_never_path_or_test(tmp_path: Path, predicted_run) -> None:
    """Lengths 2 and 10 tie on validation; job folder "10" sorts before "2" and length 10 is better on test. The
    choice is length 2 (natural order), every time."""
    for fold in range(2):
        for job, length, count in (("10", 10, 30), ("2", 2, 20)):
            predicted_run(tmp_path / job / str(fold), "prompt_tuning", fold, right(count), LABELS, 0.8,
                          length=length)
    summary = summarize(collect_runs([tmp_path]).runs, ["num_virtual_tokens"], "test/acc")
    assert summary["num_virtual_tokens"].tolist() == [2, 10] and summary["is_best"].tolist() == [True, False]


# ------------------------------------------------------------------------------------ corpus-level metrics


def test_macro_f1_gets_an_interval_over_runs_and_examples_by_bootstrap(tmp_path: Path, predicted_run) -> None:
    for fold in range(3):
        predicted_run(tmp_path / str(fold), "prompt_tuning", fold, right(22 + 2 * fold, fold), LABELS, 0.8,
                      num_folds=3)
    first = summary_of(tmp_path, "test/f1").iloc[0]
    assert first["test/f1_interval"] == "runs+examples"
    assert first["test/f1_ci_low"] < first["test/f1_mean"] < first["test/f1_ci_high"]
    again = summary_of(tmp_path, "test/f1").iloc[0]
    assert (again["test/f1_ci_low"], again["test/f1_ci_high"]) == (first["test/f1_ci_low"], first["test/f1_ci_high"])


def write_generation(run_dir: Path, predictions: list[str], references: list[str]) -> None:
    """Generation predictions, with metrics.json's ROUGE and BLEU as torchmetrics scores them in training."""
    pairs = enumerate(zip(predictions, references, strict=True))
    rows = [{"row_index": i, "prediction": p, "reference": r} for i, (p, r) in pairs]
    (run_dir / "test_predictions.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    rouge = ROUGEScore(rouge_keys=("rouge1", "rouge2", "rougeL"))(predictions, references)
    bleu = SacreBLEUScore()(predictions, [[r] for r in references])
    test = {"rougeL": float(rouge["rougeL_fmeasure"]), "rouge1": float(rouge["rouge1_fmeasure"]),
            "bleu": float(bleu), "loss": 1.0}
    data = json.loads((run_dir / "metrics.json").read_text())
    (run_dir / "metrics.json").write_text(json.dumps({**data, "task_type": "generation", "test": test,
                                                      "selection_metric": "val/rougeL", "val": {"rougeL": 0.5}}))


def test_generation_metrics_are_rebuilt_per_example(tmp_path: Path, write_run) -> None:
    rng = np.random.default_rng(0)
    words = ["the", "cat", "sat", "on", "a", "mat", "dog", "ran", "far", "home"]
    references = [" ".join(rng.choice(words, 8)) for _ in range(24)]
    for fold in range(2):
        run = write_run(tmp_path / str(fold), "prompt_tuning", 20, "vocab", 0.3, fold, 1, 0.5, num_folds=2)
        predictions = [" ".join([*r.split()[:4 + (i + fold) % 5], "dog"]) for i, r in enumerate(references)]
        write_generation(run, predictions, references)
    runs = collect_runs([tmp_path]).runs
    for metric in ("test/rougeL", "test/rouge1", "test/bleu"):
        assert run_outcomes(runs[0], metric).value() == pytest.approx(runs[0][metric], abs=5e-4)
        row = summarize(runs, ["method"], metric).iloc[0]
        assert row[f"{metric}_interval"] == "runs+examples", metric
        assert 0 <= row[f"{metric}_ci_low"] < row[f"{metric}_mean"] < row[f"{metric}_ci_high"] <= 1


def test_a_mixtures_member_and_macro_metrics_are_rebuilt(tmp_path: Path, write_run) -> None:
    run = write_run(tmp_path / "mix", "prompt_tuning", 5, "vocab", 0.3, 0, 42, 0.7, num_folds=2)
    rows, correct = [], {"sentiment": [1, 1, 0, 1], "topic": [1, 0, 0, 1, 1, 0]}
    for task, marks in correct.items():
        rows += [{"row_index": i, "label": 0, "prediction": 0 if mark else 1, "probabilities": [0.6, 0.4],
                  "task": task} for i, mark in enumerate(marks)]
    (run / "test_predictions.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    scores = {"sentiment/acc": 0.75, "topic/acc": 0.5, "macro": 0.625, "sentiment/loss": 1.0}
    data = json.loads((run / "metrics.json").read_text())
    (run / "metrics.json").write_text(json.dumps({**data, "task": "sentiment+topic", "test": scores}))
    record = collect_runs([run]).runs[0]
    assert run_outcomes(record, "test/topic/acc").value() == pytest.approx(0.5)
    macro = run_outcomes(record, "test/macro")
    assert macro.value() == pytest.approx(0.625) and sorted(set(macro.strata.tolist())) == [0, 1]
    assert torch.tensor(macro.stats).shape[0] == 10


def test_a_single_zero_shot_run_is_compared_with_every_fold(tmp_path: Path, predicted_run) -> None:
    """A zero-shot prompt trains nothing, so one run of it (no fold) stands for every fold of the others."""
    for fold in range(2):
        predicted_run(tmp_path / f"a{fold}", "prompt_tuning", fold, right(28 + fold), LABELS, 0.9)
    predicted_run(tmp_path / "zero", "hard_prompt", None, right(16), LABELS, 0.5, length=None, lr=None)
    trained = summary_of(tmp_path).set_index("method").loc["prompt_tuning"]
    assert trained["pairs_vs_zero_shot"] == 2 and trained["diff_vs_zero_shot"] == pytest.approx(12.5 / 32)
    assert trained["test_vs_zero_shot"] == "paired over runs and test examples"
