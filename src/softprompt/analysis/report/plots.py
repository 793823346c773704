"""The report's figures (matplotlib, drawn only when asked for).

Each plotted mean is the configuration chosen on the ranking metric (validation unless the user asked otherwise)
for its x value, drawn with its 95% bootstrap interval over folds, every run as a dot beside it, and its n. Bounded
metrics keep their range on the y axis; runs of a method with nothing trained (the hard-prompt baseline) give a
zero-shot reference line.
"""

from __future__ import annotations

import textwrap
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from softprompt.analysis.report.statistics import INTERVAL, best_per, is_missing, is_test, metric_range
from softprompt.analysis.report.tables import cell

REFERENCE_LABEL = "zero-shot"  # followed by the method's name
RUNS_GID = "runs"  # marks the per-run dots, so a reader of the figure (or a test) can find them
DOT_OFFSET = 0.035  # per-run dots sit this fraction of the x span left of their mean
SERIES_GAP = 0.09  # series sharing an x are spread by this fraction of the x span, so intervals do not overlap
CAPTION_CHARS_PER_INCH = 19  # wrap the 7pt caption to the figure's width
Reference = Mapping[str, Any]


def _pyplot() -> Any:
    """matplotlib on the file-only Agg backend, imported only when plotting."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _positions(values: Sequence[float] | pd.Series, log: bool) -> np.ndarray:
    """x positions; log10 of the value on a log axis, so offsets between series are the same everywhere."""
    x = np.asarray(values, dtype=float)
    return np.log10(x) if log else x


def _span(positions: np.ndarray) -> float:
    return float(np.ptp(positions)) or 1.0


def _gap(series: Sequence[pd.Series], span: float) -> float:
    """Offset between series: only when two of them share an x value (else points would sit beside their tick)."""
    values = [value for line in series for value in set(line.astype(float))]
    return SERIES_GAP * span if len(values) > len(set(values)) else 0.0


def _draw_series(ax: Any, x: np.ndarray, frame: pd.DataFrame, metric: str, label: str | None, color: str,
                 span: float, line: bool) -> list[float]:
    """Means with their intervals, each run as a small dot beside its mean, and n; returns every y drawn."""
    mean, low, high = (frame[f"{metric}_{part}"].to_numpy(float) for part in ("mean", "ci_low", "ci_high"))
    yerr = np.nan_to_num(np.vstack([mean - low, high - mean]))  # one run: no interval, no bar
    ax.errorbar(x, mean, yerr=yerr, fmt="o-" if line else "o", color=color, capsize=3, markersize=5, label=label,
                zorder=3)
    dots_x: list[float] = []
    dots_y: list[float] = []
    for xi, mi, values in zip(x, mean, frame[f"{metric}_values"], strict=True):
        spread = np.linspace(-0.4, 0.4, len(values)) * DOT_OFFSET * span if len(values) > 1 else np.zeros(1)
        dots_x += list(xi - DOT_OFFSET * span + spread)
        dots_y += list(values)
        ax.annotate(f"n={len(values)}", (xi, mi), xytext=(5, -3), textcoords="offset points", fontsize=7,
                    color=color, ha="left", va="top")
    ax.scatter(dots_x, dots_y, s=12, alpha=0.45, color=color, linewidths=0, zorder=2, gid=RUNS_GID)
    return [*mean, *low, *high, *dots_y]


def _draw_reference(ax: Any, ref: Reference, metric: str) -> list[float]:
    """The zero-shot configuration as a dashed line with its interval as a band, and its n."""
    mean, low, high = (float(ref[f"{metric}_{part}"]) for part in ("mean", "ci_low", "ci_high"))
    ax.axhline(mean, color="0.3", linestyle="--", linewidth=1, label=f"{REFERENCE_LABEL} ({ref['method']})",
               zorder=1)
    if not np.isnan(low):
        ax.axhspan(low, high, color="0.5", alpha=0.12, linewidth=0, zorder=0)
    ax.annotate(f"n={ref['n']}", xy=(1, mean), xycoords=("axes fraction", "data"), xytext=(-3, 3),
                textcoords="offset points", ha="right", fontsize=7, color="0.3")
    return [mean, low, high]


def _finish(fig: Any, axes: Sequence[Any], metric: str, rank_by: str, ys: Sequence[float]) -> Any:
    """Label the interval's kind, keep a bounded metric's axis inside its range, and say what chose each point."""
    axes[0].set_ylabel(f"{metric}\nmean, {INTERVAL}")
    bounds, finite = metric_range(metric), [y for y in ys if np.isfinite(y)]
    if bounds and finite:  # zoom to the data, never past the range; unbounded metrics (losses) keep auto limits
        low, high = min(finite), max(finite)
        pad = max(0.1 * (high - low), 0.02)
        axes[0].set_ylim(max(bounds[0], low - pad), min(bounds[1], high + pad))
    chosen = f"chosen by {rank_by}" + (" (TEST data, at the user's request: optimistic)" if is_test(rank_by) else "")
    caption = textwrap.wrap(f"Bars: {INTERVAL} (and seeds) of the mean; dots: single runs; n: runs per mean. "
                            f"Each point's other settings {chosen}.", int(fig.get_figwidth() * CAPTION_CHARS_PER_INCH))
    fig.text(0.01, 0.01, "\n".join(caption), fontsize=7, ha="left", va="bottom")
    fig.tight_layout(rect=(0, 0.02 + 0.035 * len(caption), 1, 1))
    return fig


def _legend(ax: Any, title: str) -> None:
    """Below the axes, where it cannot hide a point."""
    ax.legend(title=title, fontsize="small", title_fontsize="small", loc="upper center", bbox_to_anchor=(0.5, -0.19),
              ncol=2, frameon=False)


def _ticks(ax: Any, values: Sequence[float], log: bool) -> None:
    ax.set_xticks(_positions(values, log), [cell(float(v)) for v in values])


def _plot_prompt_length(data: pd.DataFrame, metric: str, rank_by: str, ref: Reference | None) -> Any:
    """Lester et al. Fig. 3 layout: metric vs prompt length, a line per init, a panel per method."""
    methods = sorted(data["method"].unique(), key=str)
    fig, axes = _pyplot().subplots(1, len(methods), figsize=(5.0 * len(methods), 4.8), sharey=True, squeeze=False)
    lengths = sorted(set(data["num_virtual_tokens"].astype(float)))
    log_x = lengths[0] > 0 and lengths[-1] / lengths[0] > 10
    span, ys = _span(_positions(lengths, log_x)), []
    for ax, method in zip(axes[0], methods, strict=True):
        panel = data[data["method"] == method]
        inits = sorted(panel["init"].unique(), key=str)
        lines = [(panel[panel["init"].isna()] if is_missing(init) else panel[panel["init"] == init])
                 .sort_values("num_virtual_tokens") for init in inits]
        gap = _gap([line["num_virtual_tokens"] for line in lines], span)
        for index, (init, line) in enumerate(zip(inits, lines, strict=True)):
            x = _positions(line["num_virtual_tokens"], log_x) + (index - (len(inits) - 1) / 2) * gap
            ys += _draw_series(ax, x, line, metric, "none" if is_missing(init) else cell(init), f"C{index}", span,
                               line=True)
        ys += _draw_reference(ax, ref, metric) if ref else []
        _ticks(ax, lengths, log_x)
        ax.set(title=str(method), xlabel="prompt length (virtual tokens)" + (", log scale" if log_x else ""))
        ax.margins(x=0.12)  # room for the n labels right of the last point
        _legend(ax, title="init")
    return _finish(fig, axes[0], metric, rank_by, ys)


def _plot_methods(data: pd.DataFrame, metric: str, rank_by: str, ref: Reference | None) -> Any:
    """A dot per method (the zero-shot one included, so no reference line) at its chosen configuration, best
    first."""
    fig, ax = _pyplot().subplots(figsize=(max(4.5, 1.5 * len(data)), 4.2))
    x = np.arange(len(data), dtype=float)
    ys = _draw_series(ax, x, data, metric, None, "C0", 2.5, line=False)  # span 2.5: dots a bit off each category
    ax.set_xticks(x, [str(m) for m in data["method"]], rotation=20)
    ax.set(xlim=(-0.6, len(data) - 0.4))
    ax.set_title(f"each method at its configuration\nchosen by {rank_by}", fontsize="medium")
    return _finish(fig, [ax], metric, rank_by, ys)


def _plot_lr(data: pd.DataFrame, metric: str, rank_by: str, ref: Reference | None) -> Any:
    """Metric vs learning rate (log x), a line per method."""
    fig, ax = _pyplot().subplots(figsize=(6.0, 4.8))
    methods = sorted(data["method"].unique(), key=str)
    rates = sorted(set(data["lr"].astype(float)))
    span, ys = _span(_positions(rates, True)), []
    lines = [data[data["method"] == method].sort_values("lr") for method in methods]
    gap = _gap([line["lr"] for line in lines], span)
    for index, (method, line) in enumerate(zip(methods, lines, strict=True)):
        x = _positions(line["lr"], True) + (index - (len(methods) - 1) / 2) * gap
        ys += _draw_series(ax, x, line, metric, str(method), f"C{index}", span, line=True)
    ys += _draw_reference(ax, ref, metric) if ref else []
    _ticks(ax, rates, True)
    ax.set(xlabel="learning rate (log scale)")
    ax.margins(x=0.12)  # room for the n labels right of the last point
    _legend(ax, title="method")
    return _finish(fig, [ax], metric, rank_by, ys)


Drawer = Callable[[pd.DataFrame, str, str, "Reference | None"], Any]
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


def build_figures(runs: Sequence[Mapping[str, Any]], group_by: Sequence[str], metric: str,
                  rank_by: str) -> tuple[dict[str, Any], list[str]]:
    """{file name: matplotlib Figure} for each plot whose x variable has >= 2 values, and why the others were not
    drawn."""
    ref = zero_shot_reference(runs, group_by, metric, rank_by)
    figures: dict[str, Any] = {}
    skipped: list[str] = []
    for filename, x_key, keys, draw in PLOTS:
        data = best_per(runs, group_by, metric, keys, rank_by)
        data = data[data[x_key].notna() & data[f"{metric}_mean"].notna()] if len(data) else data
        distinct = data[x_key].nunique() if len(data) else 0
        if distinct < 2:
            skipped.append(f"skipped {filename}: {x_key} has {distinct} distinct value(s), need >= 2")
            continue
        figures[filename] = draw(data, metric, rank_by, ref)
    return figures, skipped


def write_plots(runs: Sequence[Mapping[str, Any]], group_by: Sequence[str], metric: str, rank_by: str,
                out_dir: Path) -> tuple[list[Path], list[str]]:
    """Save the figures as PNGs in out_dir; returns their paths and the skipped plots' reasons."""
    figures, skipped = build_figures(runs, group_by, metric, rank_by)
    plt = _pyplot()
    for filename, fig in figures.items():
        fig.savefig(out_dir / filename, dpi=120)
        plt.close(fig)
    return [out_dir / filename for filename in figures], skipped
