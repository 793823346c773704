"""The report as text: results.md (what chose and what is reported, the table, the incomplete jobs) and the lines
softprompt-report prints."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from softprompt.analysis.report.collect import Collection, Incomplete
from softprompt.analysis.report.statistics import BOOTSTRAP_RESAMPLES, INTERVAL, SIGNIFICANCE, is_missing, is_test


def cell(value: Any) -> str:
    """A setting as a table cell: integers without `.0`, missing as `-`."""
    if is_missing(value):
        return "-"
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() and abs(value) >= 1 else f"{value:g}"
    return str(value)


def _interval_cell(row: Mapping[str, Any], metric: str) -> str:
    """`mean [low, high]`; the mean alone for a single run (no interval)."""
    mean, low, high = (row[f"{metric}_{part}"] for part in ("mean", "ci_low", "ci_high"))
    if is_missing(mean):
        return "-"
    return f"{mean:.4f}" if is_missing(low) else f"{mean:.4f} [{low:.4f}, {high:.4f}]"


def _p_cell(row: Mapping[str, Any]) -> str:
    """`best`, `n/a` (fewer than 2 pairs or undefined) or the p-value with `*` when significant."""
    if row["is_best"]:
        return "best"
    p_value = row["p_vs_best"]
    if is_missing(p_value):
        return "n/a"
    return f"{p_value:.3g}" + ("*" if p_value < SIGNIFICANCE else "")


def ranking_notes(summary: pd.DataFrame, metric: str) -> list[str]:
    """What chose the configurations and what is only reported; a loud warning when the choice used test data."""
    rank_by = summary["ranked_by"].iloc[0]
    reported = "is both ranked on and reported" if rank_by == metric else "is reported for the configuration chosen"
    if is_test(rank_by):
        notes = [f"**Ranked by {rank_by} at the user's request: choosing on the test set overestimates the chosen "
                 f"configuration's score.** {metric} {reported}."]
    else:
        notes = [f"Configurations are ranked and chosen by {rank_by} (mean over folds and seeds); "
                 f"{metric} {reported}, never used to choose."]
    unranked = int(summary[f"{rank_by}_mean"].isna().sum())
    if unranked == len(summary):
        notes.append(f"No configuration has {rank_by} (older metrics.json?): none is chosen, rows are unranked.")
    elif unranked:
        notes.append(f"{unranked} configuration(s) had no {rank_by} (older metrics.json?): ranked last, never chosen.")
    return notes


def markdown_table(summary: pd.DataFrame, group_by: Sequence[str], metric: str) -> str:
    """The results table: settings, n, ranking metric and reported metric as mean [interval], cost, p vs best."""
    rank_by = summary["ranked_by"].iloc[0]
    show_missing = bool(summary["missing"].astype(bool).any())  # the column only when a sweep is incomplete
    ranks = "RANKED ON TEST at the user's request" if is_test(rank_by) else "ranks and chooses"
    shown = [(rank_by, f"{rank_by} ({ranks}): mean [{INTERVAL}]")]
    shown += [(metric, f"{metric} (reported): mean [{INTERVAL}]")] if metric != rank_by else []
    header = [*group_by, "n", *(["missing"] if show_missing else []), *(title for _, title in shown),
              "trainable params", "wall s", f"p vs best (paired t-test on {metric})"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in summary.to_dict("records"):
        params, wall = row["trainable_params_mean"], row["wall_seconds_mean"]
        cells = [*(cell(row[key]) for key in group_by), str(row["n"]), *([row["missing"]] if show_missing else []),
                 *(_interval_cell(row, name) for name, _ in shown),
                 "-" if is_missing(params) else f"{round(params):,}", "-" if is_missing(wall) else f"{wall:.1f}",
                 _p_cell(row)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def missing_lines(summary: pd.DataFrame, group_by: Sequence[str]) -> list[str]:
    """`configuration method=..., init=... is missing fold 3` for each configuration short of a fold."""
    return [f"configuration {', '.join(f'{key}={cell(row[key])}' for key in group_by)} is missing {row['missing']}"
            for row in summary.to_dict("records") if row["missing"]]


def incomplete_section(incomplete: Sequence[Incomplete], missing: Sequence[str]) -> str:
    """Missing/failed jobs, listed by path so they can be rerun, and the configurations short of a fold."""
    if not incomplete and not missing:
        return "## Incomplete\n\nNone: every job wrote a readable metrics.json and every configuration has every fold."
    items = "\n".join([*(f"- `{job.path}`: {job.reason}" for job in incomplete), *(f"- {line}" for line in missing)])
    return f"## Incomplete\n\n{len(incomplete)} missing/failed job(s), {len(missing)} configuration(s) short " \
           f"of a fold:\n\n{items}"


def markdown_report(collection: Collection, summary: pd.DataFrame, group_by: Sequence[str], metric: str) -> str:
    """results.md: what chose and what is reported, how to read the table, the table, then the incomplete jobs."""
    intro = "\n\n".join([
        f"# Sweep results\n\n{len(collection.runs)} runs in {len(summary)} configurations.",
        *ranking_notes(summary, metric),
        f"Intervals: {INTERVAL} and seeds (percentile bootstrap of the mean, {BOOTSTRAP_RESAMPLES:,} resamples); none "
        f"for a single run. `p vs best`: paired t-test on {metric} of the chosen configuration against each other one "
        f"over their shared (fold, seed) pairs; `*` marks p < {SIGNIFICANCE}."])
    table = markdown_table(summary, group_by, metric)
    return f"{intro}\n\n{table}\n\n{incomplete_section(collection.incomplete, missing_lines(summary, group_by))}\n"
