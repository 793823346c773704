"""The plots a reviewer accepts: points at their exact x on log axes (only the categorical method axis dodges),
the bars are the table's intervals, a majority-class line and a zero-shot line, and a caption with n runs, n test
examples, steps and the interval method."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import pytest

from softprompt.analysis.report import build_figures, collect_runs, default_group_by, summarize
from softprompt.analysis.report.plots import MAJORITY_LABEL, REFERENCE_LABEL, RUNS_GID

matplotlib.use("Agg")
import matplotlib.pyplot as plt

N = 32
LABELS = [1] * 20 + [0] * 12  # the majority class is 20/32 = 0.625
RATES = (0.001, 0.01, 0.3)


@pytest.fixture(autouse=True)
def close_figures() -> Iterator[None]:
    yield
    plt.close("all")


@pytest.fixture
def runs(tmp_path: Path, predicted_run) -> list[dict[str, Any]]:
    """Two methods x three lrs x three folds, plus hard_prompt, each with its test predictions and 15 steps."""
    for fold in range(3):
        for index, lr in enumerate(RATES):
            for method, base in (("prompt_tuning", 22), ("prefix_tuning", 18)):
                predicted_run(tmp_path / f"{method}_{lr}_{fold}", method, fold, [i < base + index + fold
                                                                                 for i in range(N)],
                              LABELS, (base + index) / N, lr=lr, num_folds=3, steps=15)
        predicted_run(tmp_path / f"zero_{fold}", "hard_prompt", fold, [i < 17 for i in range(N)], LABELS, 0.5,
                      length=None, lr=None, num_folds=3, steps=0)
    return collect_runs([tmp_path]).runs


def figures(runs: list[dict[str, Any]]) -> dict[str, Any]:
    drawn, _ = build_figures(runs, default_group_by(runs), "test/acc", "val/acc")
    return drawn


def test_points_sit_at_their_exact_x_on_a_log_axis(runs: list[dict[str, Any]]) -> None:
    (ax,) = figures(runs)["metric_vs_lr.png"].axes
    assert ax.get_xscale() == "log"
    series = [line for line in ax.lines if line.get_marker() in ("o", "s")]  # the means (not the bar caps)
    assert len(series) == 2  # one line per method, neither shifted sideways
    for line in series:
        assert list(line.get_xdata()) == list(RATES)
    for collection in (c for c in ax.collections if c.get_gid() == RUNS_GID):
        assert set(np.round(collection.get_offsets()[:, 0], 12)) <= set(RATES)  # run dots too


def test_only_the_categorical_method_axis_dodges_the_run_dots(runs: list[dict[str, Any]]) -> None:
    (ax,) = figures(runs)["method_comparison.png"].axes
    (dots,) = [c for c in ax.collections if c.get_gid() == RUNS_GID]
    x = dots.get_offsets()[:, 0]
    assert not np.isin(x, [0.0, 1.0, 2.0]).any() and (np.abs(x - np.round(x)) < 0.5).all()


def test_the_bars_are_the_tables_intervals(runs: list[dict[str, Any]]) -> None:
    (ax,) = figures(runs)["method_comparison.png"].axes
    summary = summarize(runs, ["method", "lr"], "test/acc", "val/acc").set_index("method")
    best = summary[summary.index != "hard_prompt"].groupby(level=0).head(1)  # each method's val choice
    segments = [segment for c in ax.collections if hasattr(c, "get_segments") and c.get_gid() != RUNS_GID
                for segment in c.get_segments()]
    drawn = sorted((round(float(s[0][1]), 6), round(float(s[1][1]), 6)) for s in segments)
    expected = [(round(row["test/acc_ci_low"], 6), round(row["test/acc_ci_high"], 6)) for _, row in best.iterrows()]
    zero = summary.loc["hard_prompt"]
    expected.append((round(zero["test/acc_ci_low"], 6), round(zero["test/acc_ci_high"], 6)))
    assert drawn == sorted(expected)
    assert all(row["test/acc_interval"] == "runs+examples" for _, row in best.iterrows())


def test_majority_class_and_zero_shot_lines(runs: list[dict[str, Any]]) -> None:
    drawn = figures(runs)
    for name in ("metric_vs_lr.png", "metric_vs_prompt_length.png"):
        for ax in drawn[name].axes if name in drawn else []:
            labels = {line.get_label(): line.get_ydata()[0] for line in ax.lines}
            assert labels[f"{MAJORITY_LABEL} (0.625)"] == pytest.approx(0.625)
            assert labels[f"{REFERENCE_LABEL} (hard_prompt)"] == pytest.approx(17 / N)
    (ax,) = drawn["method_comparison.png"].axes
    assert any(line.get_label().startswith(MAJORITY_LABEL) for line in ax.lines)


def test_the_caption_says_runs_examples_steps_and_the_interval(runs: list[dict[str, Any]]) -> None:
    for fig in figures(runs).values():
        caption = " ".join(text.get_text() for text in fig.texts).replace("\n", " ")
        assert "3 runs per point (folds x seeds), 32 test examples" in caption
        assert "training steps" in caption and "95% CI over runs and test examples" in caption
        assert "Banerjee" in caption and "chosen by val/acc" in caption
    caption = " ".join(t.get_text() for t in figures(runs)["metric_vs_lr.png"].texts).replace("\n", " ")
    assert "15 training steps" in caption


def test_crowded_log_ticks_stay_readable(tmp_path: Path, predicted_run) -> None:
    """An lr grid with neighbours a few percent of a decade apart (0.009 and 0.01): labels are turned, the one that
    would overlap its neighbour's is left blank (its tick stays), and the legend sits beside the axes, not over the
    axis label."""
    rates = (0.003, 0.009, 0.01, 0.3)
    for fold in range(2):
        for index, lr in enumerate(rates):
            predicted_run(tmp_path / f"prompt_tuning_{lr}_{fold}", "prompt_tuning", fold,
                          [i < 18 + index for i in range(N)], LABELS, (18 + index) / N, lr=lr, num_folds=2, steps=15)
    (ax,) = figures(collect_runs([tmp_path]).runs)["metric_vs_lr.png"].axes
    assert list(ax.get_xticks()) == list(rates)  # every value keeps its tick
    labels = [label.get_text() for label in ax.get_xticklabels()]
    assert labels == ["0.003", "0.009", "", "0.3"]
    assert all(label.get_rotation() == 90 for label in ax.get_xticklabels())
    anchor = ax.get_legend().get_bbox_to_anchor().transformed(ax.transAxes.inverted())
    assert anchor.x0 > 1.0  # right of the axes


def test_ticks_far_apart_stay_upright_with_the_legend_below(runs: list[dict[str, Any]]) -> None:
    (ax,) = figures(runs)["metric_vs_lr.png"].axes
    assert [label.get_text() for label in ax.get_xticklabels()] == ["0.001", "0.01", "0.3"]
    assert all(label.get_rotation() == 0 for label in ax.get_xticklabels())
    assert ax.get_legend().get_bbox_to_anchor().transformed(ax.transAxes.inverted()).y0 < 0
