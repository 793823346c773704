"""The report's figures (matplotlib, drawn only when asked for).

Each plotted mean is the configuration chosen on the ranking metric (validation unless the user asked otherwise)
for its x value, drawn with the table's interval (runs and test examples), every run as a dot, and its n. Points
sit at their exact x (log axes included); only the categorical method axis dodges the run dots beside their mean.
Bounded metrics keep their range on the y axis; runs of a method with nothing trained (the hard-prompt baseline)
give a zero-shot reference line, and accuracy gets the majority-class line (the most frequent test label's share).
The caption says n runs, n test examples, steps and the interval. Each task gets its own plots
(`method_comparison_<task>.png`; the plain names when the runs are of one task): points of different tasks are never
drawn, or chosen, together.
"""

from __future__ import annotations

import re
import textwrap
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from softprompt.analysis.report.outcomes import majority_share
from softprompt.analysis.report.statistics import (
    best_per,
    by_task,
    default_metric,
    default_rank_by,
    is_missing,
    is_test,
    metric_range,
)
from softprompt.analysis.report.tables import cell, interval_caption

REFERENCE_LABEL = "zero-shot"  # followed by the method's name
MAJORITY_LABEL = "majority class"
RUNS_GID = "runs"  # marks the per-run dots, so a reader of the figure (or a test) can find them
DOT_OFFSET = 0.14  # on the categorical method axis, per-run dots sit this far (in categories) left of their mean
MARKERS = "osD^v<>p"  # series that share an x are told apart by marker and colour, never moved off their x
CAPTION_CHARS_PER_INCH = 19  # wrap the 7pt caption to the figure's width
Reference = Mapping[str, Any]


def _pyplot() -> Any:
    """matplotlib on the file-only Agg backend, imported only when plotting."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _draw_series(ax: Any, x: np.ndarray, frame: pd.DataFrame, metric: str, label: str | None, index: int,
                 line: bool, dodge: float = 0.0) -> list[float]:
    """Means with the table's intervals, each run as a small dot (at the mean's x, or `dodge` left of it on a
    categorical axis), and n; returns every y drawn."""
    color, marker = f"C{index}", MARKERS[index % len(MARKERS)]
    mean, low, high = (frame[f"{metric}_{part}"].to_numpy(float) for part in ("mean", "ci_low", "ci_high"))
    yerr = np.nan_to_num(np.vstack([mean - low, high - mean]))  # no interval (one run, no predictions): no bar
    ax.errorbar(x, mean, yerr=yerr, fmt=f"{marker}-" if line else marker, color=color, capsize=3, markersize=5,
                label=label, zorder=3)
    dots_x: list[float] = []
    dots_y: list[float] = []
    for xi, mi, values in zip(x, mean, frame[f"{metric}_values"], strict=True):
        spread = np.linspace(-0.4, 0.4, len(values)) * dodge if dodge and len(values) > 1 else np.zeros(len(values))
        dots_x += list(xi - dodge + spread)
        dots_y += list(values)
        ax.annotate(f"n={len(values)}", (xi, mi), xytext=(5, -3), textcoords="offset points", fontsize=7,
                    color=color, ha="left", va="top")
    ax.scatter(dots_x, dots_y, s=12, alpha=0.45, color=color, marker=marker, linewidths=0, zorder=2, gid=RUNS_GID)
    return [*mean, *low, *high, *dots_y]


def _draw_reference(ax: Any, ref: Reference, metric: str) -> list[float]:
    """The zero-shot configuration as a dashed line with its (table) interval as a band, and its n."""
    mean, low, high = (float(ref[f"{metric}_{part}"]) for part in ("mean", "ci_low", "ci_high"))
    ax.axhline(mean, color="0.3", linestyle="--", linewidth=1, label=f"{REFERENCE_LABEL} ({ref['method']})",
               zorder=1)
    if not np.isnan(low):
        ax.axhspan(low, high, color="0.5", alpha=0.12, linewidth=0, zorder=0)
    ax.annotate(f"n={ref['n']}", xy=(1, mean), xycoords=("axes fraction", "data"), xytext=(-3, 3),
                textcoords="offset points", ha="right", fontsize=7, color="0.3")
    return [mean, low, high]


def _draw_majority(ax: Any, share: float | None) -> list[float]:
    """Always predicting the most frequent test label: the floor any classifier should clear."""
    if share is None:
        return []
    ax.axhline(share, color="0.55", linestyle=":", linewidth=1.2, label=f"{MAJORITY_LABEL} ({share:.3f})", zorder=1)
    return [share]


def _range_text(values: Sequence[float], unit: str) -> str:
    finite = sorted({int(v) for v in values if not is_missing(v)})
    if not finite:
        return f"{unit} not recorded"
    return f"{finite[0]} {unit}" if len(finite) == 1 else f"{finite[0]}-{finite[-1]} {unit}"


def _finish(fig: Any, axes: Sequence[Any], data: pd.DataFrame, metric: str, rank_by: str, ys: Sequence[float],
            task: str | None) -> Any:
    """Label the interval, keep a bounded metric's axis inside its range, say what chose each point and what the
    points rest on (runs, test examples, steps), and name the task (when the report has several)."""
    if task is not None:
        fig.suptitle(f"task {task}", fontsize="medium")
    covers = interval_caption(data, metric)
    label = covers.replace(" over ", ",\n", 1)
    axes[0].set_ylabel(f"{metric}: mean\n[{label}]", fontsize="small")
    bounds, finite = metric_range(metric), [y for y in ys if np.isfinite(y)]
    if bounds and finite:  # zoom to the data, never past the range; unbounded metrics (losses) keep auto limits
        low, high = min(finite), max(finite)
        pad = max(0.1 * (high - low), 0.02)
        axes[0].set_ylim(max(bounds[0], low - pad), min(bounds[1], high + pad))
    chosen = f"chosen by {rank_by}" + (" (TEST data, at the user's request: optimistic)" if is_test(rank_by) else "")
    sizes = data.get(f"{metric}_n_examples", pd.Series(dtype=float))
    examples = _range_text([v for v in sizes if not is_missing(v) and v > 0], "test examples")
    text = (f"{_range_text(data['n'], 'runs')} per point (folds x seeds), {examples}, "
            f"{_range_text(data.get('steps_mean', pd.Series(dtype=float)), 'training steps')}. Bars: {covers} "
            "(t(n-1) on the run spread and t(N-1) on the test-example spread, combined as Banerjee's interval); "
            f"dots: single runs; n: runs per mean. Each point's other settings {chosen}.")
    caption = textwrap.wrap(text, int(fig.get_figwidth() * CAPTION_CHARS_PER_INCH))
    fig.text(0.01, 0.01, "\n".join(caption), fontsize=7, ha="left", va="bottom")
    fig.tight_layout(rect=(0, 0.02 + 0.035 * len(caption), 1, 1))
    return fig


def _legend(ax: Any, title: str, below: float = 0.19, beside: bool = False) -> None:
    """Below the axes (and their tick labels), where it cannot hide a point; `beside`: right of them (under turned
    tick labels a legend would cover the axis label), the figure widened to make room."""
    if beside:
        ax.figure.set_figwidth(ax.figure.get_figwidth() + 2.2)
        ax.legend(title=title, fontsize="small", title_fontsize="small", loc="upper left",
                  bbox_to_anchor=(1.02, 1.0), ncol=1, frameon=False)
        return
    ax.legend(title=title, fontsize="small", title_fontsize="small", loc="upper center",
              bbox_to_anchor=(0.5, -below), ncol=2, frameon=False)


def _numeric_axis(ax: Any, values: Sequence[float], label: str) -> bool:
    """Exact positions; a log axis when the values span more than a decade (ticks at the values themselves).
    Returns whether the ticks crowd (their labels are then turned, and the legend goes beside the axes)."""
    log = values[0] > 0 and values[-1] / values[0] > 10
    if log:
        ax.set_xscale("log")
        ax.minorticks_off()
    positions = np.log10(values) if log else np.asarray(values, dtype=float)
    span = float(positions[-1] - positions[0]) or 1.0
    gaps = np.diff(positions) / span  # neighbouring ticks' distance, as a fraction of the axis
    crowded = bool(len(gaps)) and float(gaps.min()) < 0.12
    labels, last = [], -np.inf
    for position, value in zip(positions, values, strict=True):
        # Upright labels overlap at under ~12% of the axis apart, turned ones at under ~3%: a tick that close to
        # the last labelled one keeps its mark and loses its label (the table has every value).
        keep = (position - last) / span >= 0.03
        labels.append(cell(float(value)) if keep else "")
        last = position if keep else last
    ax.set_xticks(values, labels, rotation=90 if crowded else 0)
    ax.set_xlabel(label + (", log scale" if log else ""))
    if log:  # room for the n labels right of the last point, in decades
        ax.set_xlim(values[0] / 10 ** 0.15, values[-1] * 10 ** 0.3)
    else:
        ax.margins(x=0.12)
    return crowded


def _plot_prompt_length(data: pd.DataFrame, metric: str, rank_by: str, refs: Sequence[Reference],
                        task: str | None = None) -> Any:
    """Lester et al. Fig. 3 layout: metric vs prompt length, a line per init, a panel per method."""
    methods = sorted(data["method"].unique(), key=str)
    fig, axes = _pyplot().subplots(1, len(methods), figsize=(5.0 * len(methods), 4.8), sharex=True, sharey=True,
                                 squeeze=False)
    lengths = sorted(set(data["num_virtual_tokens"].astype(float)))
    ys: list[float] = []
    for ax, method in zip(axes[0], methods, strict=True):
        panel = data[data["method"] == method]
        inits = sorted(panel["init"].unique(), key=str)
        for index, init in enumerate(inits):
            line = (panel[panel["init"].isna()] if is_missing(init) else panel[panel["init"] == init])
            line = line.sort_values("num_virtual_tokens")
            ys += _draw_series(ax, line["num_virtual_tokens"].to_numpy(float), line, metric,
                               "none" if is_missing(init) else cell(init), index, line=True)
        ys += _references(ax, refs, metric)
        crowded = _numeric_axis(ax, lengths, "prompt length (virtual tokens)")
        ax.set_title(str(method))
        _legend(ax, title="init", beside=crowded)
    return _finish(fig, axes[0], data, metric, rank_by, ys, task)


def _plot_methods(data: pd.DataFrame, metric: str, rank_by: str, refs: Sequence[Reference],
                  task: str | None = None) -> Any:
    """A dot per method (the zero-shot one included, so no zero-shot line) at its chosen configuration, best
    first; the run dots dodge left of their mean (a categorical axis)."""
    fig, ax = _pyplot().subplots(figsize=(max(4.5, 1.5 * len(data)), 4.4))
    x = np.arange(len(data), dtype=float)
    ys = _draw_series(ax, x, data, metric, None, 0, line=False, dodge=DOT_OFFSET)
    ys += _references(ax, [ref for ref in refs if ref.get("kind") == MAJORITY_LABEL], metric)
    ax.set_xticks(x, [str(m) for m in data["method"]], rotation=20)
    ax.set(xlim=(-0.6, len(data) - 0.4))
    ax.set_title(f"each method at its configuration\nchosen by {rank_by}", fontsize="medium")
    if ax.get_legend_handles_labels()[0]:
        _legend(ax, title="reference", below=0.3)  # under the rotated method names
    return _finish(fig, [ax], data, metric, rank_by, ys, task)


def _plot_lr(data: pd.DataFrame, metric: str, rank_by: str, refs: Sequence[Reference],
             task: str | None = None) -> Any:
    """Metric vs learning rate (log x), a line per method."""
    fig, ax = _pyplot().subplots(figsize=(6.0, 4.8))
    methods = sorted(data["method"].unique(), key=str)
    ys: list[float] = []
    for index, method in enumerate(methods):
        line = data[data["method"] == method].sort_values("lr")
        ys += _draw_series(ax, line["lr"].to_numpy(float), line, metric, str(method), index, line=True)
    ys += _references(ax, refs, metric)
    crowded = _numeric_axis(ax, sorted(set(data["lr"].astype(float))), "learning rate")
    _legend(ax, title="method", beside=crowded)
    return _finish(fig, [ax], data, metric, rank_by, ys, task)


def _references(ax: Any, refs: Sequence[Reference], metric: str) -> list[float]:
    ys: list[float] = []
    for ref in refs:
        ys += _draw_majority(ax, ref["share"]) if ref.get("kind") == MAJORITY_LABEL else _draw_reference(ax, ref,
                                                                                                        metric)
    return ys


Drawer = Callable[[pd.DataFrame, str, str, Sequence[Reference], "str | None"], Any]
PLOTS: tuple[tuple[str, str, tuple[str, ...], Drawer], ...] = (  # file, x variable, keys a point is chosen for, drawer
    ("metric_vs_prompt_length.png", "num_virtual_tokens", ("method", "init", "num_virtual_tokens"),
     _plot_prompt_length),
    ("method_comparison.png", "method", ("method",), _plot_methods),
    ("metric_vs_lr.png", "lr", ("method", "lr"), _plot_lr),
)


def zero_shot_reference(runs: Sequence[Mapping[str, Any]], group_by: Sequence[str], metric: str,
                        rank_by: str) -> Reference | None:
    """The chosen configuration (by `rank_by`; its summary row) of the method that trains nothing, the zero-shot
    baseline (metrics.json says `trainable_params: 0`), or None when the sweep has none."""
    zero_shot = {run.get("method") for run in runs if run.get("trainable_params") == 0}
    if len(zero_shot) != 1:
        return None
    chosen = best_per(runs, group_by, metric, ("method",), rank_by)
    rows = chosen[chosen["method"] == zero_shot.pop()] if len(chosen) else chosen
    return rows.iloc[0].to_dict() if len(rows) and not np.isnan(rows.iloc[0][f"{metric}_mean"]) else None


def references(runs: Sequence[Mapping[str, Any]], group_by: Sequence[str], metric: str,
               rank_by: str) -> list[Reference]:
    """The zero-shot configuration and, for accuracy, the majority-class share of the test labels."""
    refs: list[Reference] = []
    zero_shot = zero_shot_reference(runs, group_by, metric, rank_by)
    refs += [zero_shot] if zero_shot else []
    share = majority_share(runs) if metric.rsplit("/", 1)[-1] == "acc" and metric.count("/") == 1 else None
    refs += [{"kind": MAJORITY_LABEL, "share": share}] if share is not None else []
    return refs


def plot_file(filename: str, task: Any, several: bool) -> str:
    """`method_comparison.png`, or `method_comparison_<task>.png` when the report has several tasks."""
    if not several:
        return filename
    stem, suffix = filename.rsplit(".", 1)
    return f"{stem}_{re.sub(r'[^A-Za-z0-9_.-]+', '-', str(task))}.{suffix}"


def build_figures(runs: Sequence[Mapping[str, Any]], group_by: Sequence[str], metric: str | None = None,
                  rank_by: str | None = None, tune: Sequence[str] = ()) -> tuple[dict[str, Any], list[str]]:
    """{file name: matplotlib Figure} for each task and plot whose x variable has >= 2 values, and why the others
    were not drawn. `metric` / `rank_by` None: each task's own (test/ and val/<selection metric>). `tune`: keys
    chosen inside each fold (nested selection), as in the table, except on the plot whose x they are."""
    figures: dict[str, Any] = {}
    skipped: list[str] = []
    tasks = by_task(runs)
    for task, members in tasks.items():
        task_metric, task_rank_by = metric or default_metric(members), rank_by or default_rank_by(members)
        refs = references(members, group_by, task_metric, task_rank_by)
        for filename, x_key, keys, draw in PLOTS:
            name = plot_file(filename, task, len(tasks) > 1)
            data = best_per(members, group_by, task_metric, keys, task_rank_by, tune)
            data = data[data[x_key].notna() & data[f"{task_metric}_mean"].notna()] if len(data) else data
            distinct = data[x_key].nunique() if len(data) else 0
            if distinct < 2:
                skipped.append(f"skipped {name}: {x_key} has {distinct} distinct value(s), need >= 2")
                continue
            figures[name] = draw(data, task_metric, task_rank_by, refs, cell(task) if len(tasks) > 1 else None)
    return figures, skipped


def write_plots(runs: Sequence[Mapping[str, Any]], group_by: Sequence[str], metric: str | None,
                rank_by: str | None, out_dir: Path, tune: Sequence[str] = ()) -> tuple[list[Path], list[str]]:
    """Save the figures as PNGs in out_dir; returns their paths and the skipped plots' reasons."""
    figures, skipped = build_figures(runs, group_by, metric, rank_by, tune)
    plt = _pyplot()
    for filename, fig in figures.items():
        fig.savefig(out_dir / filename, dpi=120)
        plt.close(fig)
    return [out_dir / filename for filename in figures], skipped
