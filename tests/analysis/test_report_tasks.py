"""softprompt-report on runs of several tasks: each task is its own table, ranking, paired tests and plots, so no
configuration is ever ranked, tested or drawn against another task's. A task mixture is one task (its name), its
per-task and macro columns kept as they are. A sweep of one task reports exactly as before (plain plot names, no
task column)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import matplotlib
import pandas as pd
import pytest

from softprompt.analysis.report import build_figures, collect_runs, default_group_by, summarize
from softprompt.analysis.report.plots import RUNS_GID
from softprompt.cli.report import main

matplotlib.use("Agg")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PLOTS = ("metric_vs_prompt_length", "method_comparison", "metric_vs_lr")
# task -> (method, prompt length, lr) -> test/acc of folds 0, 1 (val/acc 0.01 lower). "hard" is worse everywhere:
# a table across tasks would mark easy's best configuration best and test hard's against it.
ACCURACIES = {
    "easy": {("prompt_tuning", 5, 0.3): [0.90, 0.92], ("prompt_tuning", 50, 0.3): [0.94, 0.96],
             ("prefix_tuning", 5, 0.01): [0.80, 0.83]},
    "hard": {("prompt_tuning", 5, 0.3): [0.61, 0.62], ("prompt_tuning", 50, 0.3): [0.55, 0.57],
             ("prefix_tuning", 5, 0.01): [0.50, 0.54]},
}


def retask(run_dir: Path, task: str, **changes: Any) -> None:
    """Set metrics.json's task (and any other top-level field) of a run write_run made."""
    path = run_dir / "metrics.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "task": task, **changes}))


@pytest.fixture
def two_tasks(tmp_path: Path, write_run) -> Path:
    root = tmp_path / "multirun"
    job = 0
    for task, configurations in ACCURACIES.items():
        for (method, length, lr), accs in configurations.items():
            for fold, acc in enumerate(accs):
                retask(write_run(root / str(job), method, length, "vocab", lr, fold, 42, acc, num_folds=2), task)
                job += 1
    return root


def test_each_task_has_its_own_best_configuration_and_tests(two_tasks: Path) -> None:
    assert main([str(two_tasks)]) == 0
    table = pd.read_csv(two_tasks / "results.csv")
    assert list(table.columns[:4]) == ["task", "method", "num_virtual_tokens", "lr"]  # the task is no setting
    assert table["task"].tolist() == ["easy"] * 3 + ["hard"] * 3  # tasks in name order, each ranked on its own
    best = table[table["is_best"]]
    assert best[["task", "num_virtual_tokens"]].values.tolist() == [["easy", 50], ["hard", 5]]
    hard = table[table["task"] == "hard"]
    assert hard["test/acc_mean"].tolist() == pytest.approx([0.615, 0.56, 0.52])
    assert hard["pairs_vs_best"].tolist()[1:] == [2, 2]  # tested against hard's best, over its own folds
    assert table["missing"].isna().all()  # each task's folds are expected of its own runs only


def test_results_md_has_one_section_per_task_each_with_one_best(two_tasks: Path, capsys) -> None:
    main([str(two_tasks)])
    markdown = (two_tasks / "results.md").read_text()
    assert "12 runs in 6 configurations of 2 tasks (easy, hard). Each task has its own table: its configurations " \
           "are ranked, chosen and tested against each other, never against another task's." in markdown
    _, easy = markdown.split("## Task easy\n", 1)
    easy, hard = easy.split("## Task hard\n", 1)
    hard = hard.split("## Incomplete", 1)[0]
    for section, best_row in ((easy, "| prompt_tuning | 50 | 0.3 | 2 (low n) |"),
                              (hard, "| prompt_tuning | 5 | 0.3 | 2 (low n) |")):
        rows = [line for line in section.splitlines() if line.startswith("| prefix_tuning") or
                line.startswith("| prompt_tuning")]
        assert len(rows) == 3 and ["| best |" in row for row in rows] == [True, False, False]
        assert rows[0].startswith(best_row)
        assert "ranked and chosen by val/acc" in section
    assert "| task |" not in markdown  # the section names the task
    stdout = capsys.readouterr().out
    assert "task easy:" in stdout and "task hard:" in stdout and stdout.count("| best |") == 2


def test_each_task_gets_its_own_plots_named_after_it(two_tasks: Path, capsys) -> None:
    main([str(two_tasks)])
    for task in ACCURACIES:
        for plot in PLOTS:
            assert (two_tasks / f"{plot}_{task}.png").read_bytes()[:8] == PNG_SIGNATURE
    assert not [name for name in (f"{plot}.png" for plot in PLOTS) if (two_tasks / name).exists()]


def test_a_plot_draws_the_runs_of_its_task_only(two_tasks: Path) -> None:
    runs = collect_runs([two_tasks]).runs
    figures, skipped = build_figures(runs, default_group_by(runs))
    assert not skipped and sorted(figures) == sorted(f"{plot}_{task}.png" for plot in PLOTS for task in ACCURACIES)
    for task, configurations in ACCURACIES.items():
        figure = figures[f"metric_vs_prompt_length_{task}.png"]
        dots = sorted(y for ax in figure.axes for artist in ax.collections if artist.get_gid() == RUNS_GID
                      for _, y in artist.get_offsets())
        assert dots == pytest.approx(sorted(acc for accs in configurations.values() for acc in accs))
        assert figure._suptitle.get_text() == f"task {task}"


def test_tasks_with_different_selection_metrics_each_use_their_own(two_tasks: Path) -> None:
    """One task selects on acc, the other on f1: neither needs metric= nor rank_by= (no default across tasks)."""
    for metrics in two_tasks.glob("*/metrics.json"):
        data = json.loads(metrics.read_text())
        if data["task"] == "hard":
            for stage in ("val", "test"):
                data[stage]["f1"] = data[stage].pop("acc")
            metrics.write_text(json.dumps({**data, "selection_metric": "val/f1"}))
    assert main([str(two_tasks)]) == 0
    table = pd.read_csv(two_tasks / "results.csv")
    assert table.groupby("task")["ranked_by"].first().to_dict() == {"easy": "val/acc", "hard": "val/f1"}
    assert table.groupby("task")["p_vs_best_on"].first().to_dict() == {"easy": "test/acc", "hard": "test/f1"}
    assert table[table["is_best"]]["task"].tolist() == ["easy", "hard"]


def test_summarize_never_ranks_configurations_of_two_tasks_against_each_other(two_tasks: Path) -> None:
    runs = collect_runs([two_tasks]).runs
    summary = summarize(runs, ["method", "num_virtual_tokens"], "test/acc", "val/acc")
    assert summary.groupby("task")["is_best"].sum().to_dict() == {"easy": 1, "hard": 1}


def test_a_mixture_is_its_own_task_with_its_per_task_and_macro_columns(tmp_path: Path, write_run) -> None:
    for fold in range(2):
        retask(write_run(tmp_path / f"single{fold}", "prompt_tuning", 5, "vocab", 0.3, fold, 42, 0.9, num_folds=2),
               "sentiment")
        mixed = write_run(tmp_path / f"mix{fold}", "prompt_tuning", 5, "vocab", 0.3, fold, 42, 0.7, num_folds=2)
        scores = {"sentiment/acc": 0.8, "topic/acc": 0.6 + fold / 10, "macro": 0.7 + fold / 20}
        retask(mixed, "sentiment+topic", selection_metric="val/macro", val=scores, test=scores)
    assert main([str(tmp_path)]) == 0
    table = pd.read_csv(tmp_path / "results.csv")
    assert table["task"].tolist() == ["sentiment", "sentiment+topic"] and table["is_best"].all()
    mixture = table[table["task"] == "sentiment+topic"].iloc[0]
    assert mixture["ranked_by"] == "val/macro" and mixture["test/macro_mean"] == pytest.approx(0.725)
    assert mixture["test/topic/acc_mean"] == pytest.approx(0.65) and mixture["test/sentiment/acc_mean"] == 0.8
    assert "## Task sentiment+topic" in (tmp_path / "results.md").read_text()


def test_one_task_keeps_the_plain_layout(tmp_path: Path, write_run) -> None:
    for fold in range(2):
        for length, acc in ((5, 0.7), (50, 0.8)):
            write_run(tmp_path / f"{length}_{fold}", "prompt_tuning", length, "vocab", 0.3, fold, 42, acc + fold / 50,
                      num_folds=2)
    main([str(tmp_path)])
    assert "task" not in pd.read_csv(tmp_path / "results.csv").columns
    assert (tmp_path / "metric_vs_prompt_length.png").exists()
    assert "## Task" not in (tmp_path / "results.md").read_text()


def test_an_ensemble_combines_runs_of_one_task_only(tmp_path: Path, write_run) -> None:
    """Two tasks with the same configuration: each task's runs are one ensemble (combined across tasks, their test
    rows would differ and the report would refuse them)."""
    labels = {"easy": [0, 1, 0, 1], "hard": [1, 0, 1]}
    for task, truth in labels.items():
        for fold in range(2):
            run = write_run(tmp_path / f"{task}{fold}", "prompt_tuning", 5, "vocab", 0.3, fold, 42, 0.5, num_folds=2)
            wrong = fold  # fold 0 predicts every row right, fold 1 gets row 1 wrong
            rows = [{"row_index": i, "label": label, "prediction": 1 - label if i == wrong else label,
                     "probabilities": [0.3, 0.7] if (1 - label if i == wrong else label) else [0.7, 0.3]}
                    for i, label in enumerate(truth)]
            (run / "test_predictions.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
            acc = sum(row["prediction"] == row["label"] for row in rows) / len(rows)
            retask(run, task, test={"acc": acc}, val={"acc": acc})
    assert main([str(tmp_path), "ensemble=mean"]) == 0
    table = pd.read_csv(tmp_path / "ensemble.csv")
    assert table["task"].tolist() == ["easy", "hard"] and table["test_rows"].tolist() == [4, 3]
    assert table["n"].tolist() == [2, 2]
