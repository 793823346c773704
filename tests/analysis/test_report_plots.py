"""softprompt-report's plots, read back from the matplotlib figures: values stay in the metric's range, every run is
a dot, every mean has its n, hard_prompt is a zero-shot reference, and each point is chosen on validation."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import matplotlib
import pytest

from softprompt.analysis.report import best_per, collect_runs, default_group_by
from softprompt.analysis.report.plots import REFERENCE_LABEL, RUNS_GID, build_figures

matplotlib.use("Agg")
import matplotlib.pyplot as plt

INTERVAL = "95% CI"  # "over runs and test examples", or "over runs only" for these runs without predictions


@pytest.fixture(autouse=True)
def close_figures() -> Iterator[None]:
    yield
    plt.close("all")


@pytest.fixture
def sweep_runs(tmp_path: Path, sweep_accuracies, write_run) -> list[dict[str, Any]]:
    """The fake sweep's runs: 2 methods x 2 lengths (one init and lr each) plus hard_prompt, 3 folds each."""
    job = 0
    for (method, length, init, lr), accs in sweep_accuracies.items():
        for fold, acc in enumerate(accs):
            write_run(tmp_path / str(job), method, length, init, lr, fold, 42, acc)
            job += 1
    return collect_runs([tmp_path]).runs


def figures(runs: list[dict[str, Any]], metric: str = "test/acc", rank_by: str = "val/acc") -> dict[str, Any]:
    drawn, _ = build_figures(runs, default_group_by(runs), metric, rank_by)
    return drawn


def dots(ax: Any) -> list[float]:
    """y of every per-run dot on an axis."""
    return [float(y) for c in ax.collections if c.get_gid() == RUNS_GID for _, y in c.get_offsets()]


def references(ax: Any) -> list[float]:
    return [float(line.get_ydata()[0]) for line in ax.lines if line.get_label().startswith(REFERENCE_LABEL)]


def n_labels(ax: Any) -> list[str]:
    return [text.get_text() for text in ax.texts if text.get_text().startswith("n=")]


def mean_markers(ax: Any) -> list[list[float]]:
    """The plotted means of each series, from the errorbar data lines (the ones with a marker)."""
    return [[float(y) for y in line.get_ydata()] for line in ax.lines if line.get_marker() == "o"]


def test_accuracy_plots_stay_in_zero_one_and_name_the_interval(sweep_runs: list[dict[str, Any]]) -> None:
    drawn = figures(sweep_runs)
    assert set(drawn) == {"metric_vs_prompt_length.png", "method_comparison.png", "metric_vs_lr.png"}
    for fig in drawn.values():
        assert any(INTERVAL in text.get_text() for text in fig.texts)  # the caption
        for ax in fig.axes:
            low, high = ax.get_ylim()
            assert 0.0 <= low < high <= 1.0
        assert INTERVAL in fig.axes[0].get_ylabel() and "runs" in fig.axes[0].get_ylabel()


def test_wide_two_fold_intervals_never_leave_zero_one(tmp_path: Path, write_run) -> None:
    """Two folds far apart: the t interval spans about -3 to 4; what is drawn is clipped to [0, 1]."""
    for job, (length, fold, acc) in enumerate([(5, 0, 0.02), (5, 1, 0.99), (50, 0, 0.05), (50, 1, 0.97)]):
        for method in ("prompt_tuning", "prefix_tuning"):
            write_run(tmp_path / f"{method}{job}", method, length, "random", 0.3, fold, 1, acc, num_folds=2)
    for fig in figures(collect_runs([tmp_path]).runs).values():
        for ax in fig.axes:
            low, high = ax.get_ylim()
            assert 0.0 <= low < high <= 1.0
            drawn = [y for line in ax.lines for y in line.get_ydata()]  # means and interval caps
            drawn += [y for c in ax.collections for segment in getattr(c, "get_segments", list)() for _, y in segment]
            assert drawn and min(drawn) >= 0.0 and max(drawn) <= 1.0


def test_every_run_is_a_dot_and_every_mean_has_its_n(sweep_runs: list[dict[str, Any]], sweep_accuracies) -> None:
    drawn = figures(sweep_runs)
    (by_length,) = [ax for ax in drawn["metric_vs_prompt_length.png"].axes if ax.get_title() == "prompt_tuning"]
    grid = sweep_accuracies
    assert sorted(dots(by_length)) == pytest.approx(sorted([*grid["prompt_tuning", 5, "class_labels", 0.3],
                                                            *grid["prompt_tuning", 50, "class_labels", 0.3]]))
    assert n_labels(by_length) == ["n=3", "n=3", "n=3"]  # two means and the zero-shot line
    (methods,) = drawn["method_comparison.png"].axes
    chosen = [*grid["prompt_tuning", 50, "class_labels", 0.3], *grid["prefix_tuning", 50, "random", 0.01],
              *grid["hard_prompt", None, None, None]]
    assert sorted(dots(methods)) == pytest.approx(sorted(chosen))
    assert n_labels(methods) == ["n=3"] * 3


def test_method_comparison_draws_dots_with_intervals_not_bars(sweep_runs: list[dict[str, Any]]) -> None:
    (ax,) = figures(sweep_runs)["method_comparison.png"].axes
    assert not ax.patches  # no bars from 0
    assert [tick.get_text() for tick in ax.get_xticklabels()] == ["prompt_tuning", "prefix_tuning", "hard_prompt"]
    (means,) = mean_markers(ax)
    assert means == pytest.approx([0.8266667, 0.7466667, 0.56])
    assert not references(ax)  # hard_prompt is one of the dots here


def test_a_zero_shot_line_marks_hard_prompt_in_the_length_and_lr_plots(sweep_runs: list[dict[str, Any]],
                                                                       sweep_accuracies) -> None:
    drawn = figures(sweep_runs)
    hard_prompt = sum(sweep_accuracies["hard_prompt", None, None, None]) / 3
    for name in ("metric_vs_prompt_length.png", "metric_vs_lr.png"):
        for ax in drawn[name].axes:
            assert references(ax) == pytest.approx([hard_prompt])
            assert "zero-shot (hard_prompt)" in [text.get_text() for text in ax.get_legend().get_texts()]


def test_no_zero_shot_line_without_hard_prompt_runs(sweep_runs: list[dict[str, Any]]) -> None:
    drawn = figures([run for run in sweep_runs if run["method"] != "hard_prompt"])
    assert not [ax for fig in drawn.values() for ax in fig.axes if references(ax)]


def test_each_plotted_point_is_chosen_on_validation_and_shows_its_test_score(tmp_path: Path, write_run) -> None:
    """At each length two learning rates: the one better on validation is worse on test; the plot shows it."""
    grid = {(5, 0.3): (0.90, 0.60), (5, 0.01): (0.70, 0.80), (50, 0.3): (0.70, 0.85), (50, 0.01): (0.92, 0.65)}
    for (length, lr), (val_acc, acc) in grid.items():
        for fold in range(2):
            write_run(tmp_path / f"{length}_{lr}_{fold}", "prompt_tuning", length, "vocab", lr, fold, 1,
                      acc + fold / 100, val_acc=val_acc, num_folds=2)
    runs = collect_runs([tmp_path]).runs
    chosen = best_per(runs, ["num_virtual_tokens", "lr"], "test/acc", ["num_virtual_tokens"])
    assert dict(zip(chosen["num_virtual_tokens"], chosen["lr"], strict=True)) == {5: 0.3, 50: 0.01}
    (ax,) = figures(runs)["metric_vs_prompt_length.png"].axes
    assert mean_markers(ax) == [pytest.approx([0.605, 0.655])]  # the test scores of the validation choices


def test_ranking_on_test_is_flagged_in_the_caption(sweep_runs: list[dict[str, Any]]) -> None:
    for fig in figures(sweep_runs, rank_by="test/acc").values():
        assert any("TEST data" in text.get_text() for text in fig.texts)


def test_a_loss_keeps_its_own_scale() -> None:
    runs = [{"method": method, "num_virtual_tokens": length, "init": "random", "lr": 0.3, "fold": fold, "seed": 0,
             "val/loss": loss + fold, "test/loss": loss + fold}
            for method in ("prompt_tuning", "prefix_tuning") for length, loss in ((5, 2.0), (50, 1.5))
            for fold in range(2)]
    (ax, _) = figures(runs, "test/loss", "val/loss")["metric_vs_prompt_length.png"].axes
    assert ax.get_ylim()[1] > 2.5  # not clipped to [0, 1]
