"""The report as text: results.md (what chose and what is reported, how the intervals and tests work, the table,
its resolution, the incomplete jobs) and the lines softprompt-report prints. A summary of several tasks is one
section per task: its own notes, table, resolution and ranking."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from softprompt.analysis.report.collect import Collection, Incomplete
from softprompt.analysis.report.intervals import EXAMPLES_ONLY, NESTED, RUNS_AND_EXAMPLES, RUNS_ONLY
from softprompt.analysis.report.outcomes import FILES, stage_word
from softprompt.analysis.report.selection import CHOSEN, cell
from softprompt.analysis.report.statistics import (
    BEST,
    LOW_N,
    SIGNIFICANCE,
    TASK,
    ZERO_SHOT,
    is_missing,
    is_test,
    metric_range,
)

__all__ = ["cell", "markdown_report", "markdown_table", "ranking_notes", "resolution_line", "task_lines"]

MARKS = {EXAMPLES_ONLY: "†", RUNS_ONLY: "‡", RUNS_AND_EXAMPLES: "§", NESTED: "¶"}


def covers(kind: str, metric: str) -> str:
    """What an interval of `kind` on `metric` covers, for headers and captions."""
    word = stage_word(metric)
    return {RUNS_AND_EXAMPLES: f"95% CI over runs and {word} examples",
            NESTED: f"95% CI over runs and {word} examples, each fold its own",
            EXAMPLES_ONLY: f"95% CI over {word} examples only (one run)",
            RUNS_ONLY: f"95% CI over runs only (no {word} predictions)"}[kind]


def legend(kind: str, metric: str) -> str:
    """The note under a table for a row whose `metric` interval covers other sources than its header says."""
    word, stage = stage_word(metric), metric.split("/", 1)[0]
    file = FILES.get(stage, f"{stage}_predictions.jsonl")
    return f"{MARKS[kind]} {metric}: " + {
        EXAMPLES_ONLY: f"one run: the interval covers {word}-set sampling only (that run's own population score)",
        RUNS_ONLY: f"over runs only: no usable {file} for this row (an older run?), so " + (
            "test-set sampling is not in its interval" if stage == "test" else
            f"{word} sampling is in it only through the runs' spread (folds validating on their own examples); one "
            "run gets no interval"),
        RUNS_AND_EXAMPLES: f"over runs and {word} examples (every run on the same examples)",
        NESTED: f"over runs and {word} examples, each fold scored on its own examples"}[kind]


def _kind(row: Mapping[str, Any], metric: str) -> str:
    return str(row.get(f"{metric}_interval") or RUNS_ONLY).split(":", 1)[0]


def _header_kind(summary: pd.DataFrame, metric: str) -> str:
    """The interval kind most rows of `metric` have (the header names it; other rows carry a mark)."""
    kinds = Counter(_kind(row, metric) for row in summary.to_dict("records"))
    return kinds.most_common(1)[0][0] if kinds else RUNS_ONLY


def _interval_cell(row: Mapping[str, Any], metric: str, header: str) -> str:
    """`mean [low, high]` with a mark when its interval covers other sources than the header says; the mean alone
    where no interval is estimated (one run and no predictions)."""
    mean, low, high = (row[f"{metric}_{part}"] for part in ("mean", "ci_low", "ci_high"))
    if is_missing(mean):
        return "-"
    kind = _kind(row, metric)
    mark = MARKS.get(kind, "") if kind != header else ""
    return f"{mean:.4f}{mark}" if is_missing(low) else f"{mean:.4f} [{low:.4f}, {high:.4f}]{mark}"


def _comparison_cell(row: Mapping[str, Any], against: str) -> str:
    """`-0.0521 [-0.1010, -0.0032] p=0.041*` (this row minus the other, Holm p); `best` / `-` / `n/a`."""
    if against == BEST and row["is_best"]:
        return "best"
    difference = row.get(f"diff_vs_{against}")
    if is_missing(difference):
        return "n/a (no shared runs)" if row.get(f"test_vs_{against}") else "-"
    low, high, p_value = row[f"diff_vs_{against}_low"], row[f"diff_vs_{against}_high"], row[f"p_vs_{against}"]
    interval = "" if is_missing(low) else f" [{low:+.4f}, {high:+.4f}]"
    p_text = "p n/a" if is_missing(p_value) else f"p={p_value:.3g}" + ("*" if p_value < SIGNIFICANCE else "")
    return f"{difference:+.4f}{interval} {p_text}"


def _n_cell(row: Mapping[str, Any]) -> str:
    n = int(row["n"])
    return f"{n} (one run)" if n == 1 else f"{n} (low n)" if n < LOW_N else str(n)


def task_sections(summary: pd.DataFrame) -> list[tuple[Any, pd.DataFrame]]:
    """(task, its rows) for each task of a summary, in its order; one (None, summary) when it holds one task."""
    if TASK not in summary or summary[TASK].nunique(dropna=False) < 2:
        return [(None, summary)]
    return [(task, rows.reset_index(drop=True)) for task, rows in summary.groupby(TASK, sort=False, dropna=False)]


def reported_metric(summary: pd.DataFrame) -> str:
    """The metric a (one task's) summary reports and compares."""
    return str(summary["p_vs_best_on"].iloc[0])


def _has_zero_shot(summary: pd.DataFrame) -> bool:
    return f"test_vs_{ZERO_SHOT}" in summary and bool(summary[f"test_vs_{ZERO_SHOT}"].astype(str).str.len().any())


def ranking_notes(summary: pd.DataFrame, metric: str) -> list[str]:
    """What chose the configurations and what is only reported; a loud warning when the choice used test data."""
    rank_by = summary["ranked_by"].iloc[0]
    reported = "is both ranked on and reported" if rank_by == metric else "is reported for the configuration chosen"
    if is_test(rank_by):
        notes = [f"**Ranked by {rank_by} at the user's request: choosing on the test set overestimates the chosen "
                 f"configuration's score.** {metric} {reported}."]
    else:
        notes = [f"Configurations are ranked and chosen by {rank_by} (mean over folds and seeds; ties by the "
                 f"settings' natural order); {metric} {reported}, never used to choose."]
    if CHOSEN in summary:
        tuned = summary["tuned"].iloc[0]
        notes.append(f"Nested selection: {tuned} is chosen inside each fold (and seed) by that run's {rank_by}, and "
                     f"that run's {metric} is the row's; a row estimates the method with {tuned} tuned on "
                     f"validation. Its {rank_by} is the chosen runs' (the best candidate's: optimistic).")
    unranked = int(summary[f"{rank_by}_mean"].isna().sum())
    if unranked == len(summary):
        notes.append(f"No configuration has {rank_by} (older metrics.json?): none is chosen, rows are unranked.")
    elif unranked:
        notes.append(f"{unranked} configuration(s) had no {rank_by} (older metrics.json?): ranked last, never chosen.")
    return notes


def markdown_table(summary: pd.DataFrame, group_by: Sequence[str], metric: str) -> str:
    """The results table: settings, n, ranking and reported metric as mean [interval], the difference to the best
    and to zero-shot with their intervals and Holm p, cost."""
    rank_by = summary["ranked_by"].iloc[0]
    keys = [key for key in group_by if key in summary]
    show_missing = bool(summary["missing"].astype(bool).any())  # the column only when a sweep is incomplete
    ranks = "RANKED ON TEST at the user's request" if is_test(rank_by) else "ranks and chooses"
    names = [rank_by, *([metric] if metric != rank_by else [])]
    headers = {name: _header_kind(summary, name) for name in names}
    titles = [f"{rank_by} ({ranks}): mean [{covers(headers[rank_by], rank_by)}]"]
    titles += [f"{metric} (reported): mean [{covers(headers[metric], metric)}]"] if metric != rank_by else []
    against = [BEST, *([ZERO_SHOT] if _has_zero_shot(summary) else [])]
    compared = [f"{metric} minus {'best' if a == BEST else 'zero-shot'}: diff [95% CI], Holm p" for a in against]
    chosen = [f"{summary['tuned'].iloc[0]} chosen per fold (on {rank_by})"] if CHOSEN in summary else []
    header = [*keys, *chosen, "n", *(["missing"] if show_missing else []), *titles, *compared, "trainable params",
              "wall s"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in summary.to_dict("records"):
        params, wall = row["trainable_params_mean"], row["wall_seconds_mean"]
        cells = [*(cell(row[key]) for key in keys), *([row[CHOSEN]] if chosen else []), _n_cell(row),
                 *([row["missing"]] if show_missing else []),
                 *(_interval_cell(row, name, headers[name]) for name in names),
                 *(_comparison_cell(row, a) for a in against),
                 "-" if is_missing(params) else f"{round(params):,}", "-" if is_missing(wall) else f"{wall:.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    marks = {(name, _kind(row, name)) for row in summary.to_dict("records") for name in names
             if _kind(row, name) != headers[name]}
    lines += [""] + [legend(kind, name) for name, kind in sorted(marks)] if marks else []
    return "\n".join(lines)


def resolution_line(summary: pd.DataFrame, metric: str) -> str:
    """What the sweep can tell apart: the median half-width of the paired 95% intervals against the best."""
    widths = pd.to_numeric(summary.get(f"half_width_vs_{BEST}"), errors="coerce").dropna()
    runs = sorted({int(n) for n in summary["n"]})
    n_text = f"{runs[0]}" if len(runs) == 1 else f"{runs[0]}-{runs[-1]}"
    sizes = pd.to_numeric(summary.get(f"{metric}_n_examples"), errors="coerce").dropna()
    sizes = sizes[sizes > 0]
    word = stage_word(metric)
    examples = f"{int(sizes.max())} {word} examples" if len(sizes) else f"{word} examples not in the intervals"
    if widths.empty:
        return f"Resolution: nothing compared at this n ({n_text} runs, {examples})."
    width = float(np.median(widths))
    if width == 0:
        return (f"Resolution: the compared configurations made the same test predictions as the best ({n_text} runs, "
                f"{examples}): their differences are exactly 0.")
    amount = f"{100 * width:.1f} points" if metric_range(metric) else f"{width:.4g} ({metric})"
    return (f"Resolution: differences under {amount} are not resolved at this n ({n_text} runs, {examples}): the "
            f"median half-width of the paired 95% intervals against the best.")


def _method_note(summary: pd.DataFrame, metric: str) -> str:
    count = str(summary["correction"].iloc[0]).split()[-2] if "correction" in summary else "all"
    return (f"Intervals: test metrics cover training randomness over runs (folds x seeds) and test-set sampling over "
            "examples, from each run's test_predictions.jsonl: half-width^2 = t(n-1)^2 s_runs^2/n + t(N-1)^2 "
            "s_examples^2/N (Banerjee's combination; s_examples^2 is the variance over examples of the outcome "
            "averaged over runs, less the run-by-example interaction; corpus-level metrics get it from a seeded "
            "bootstrap over examples, the same resamples for every run). They cover the population score over "
            "training runs (given this training pool) and test examples, and are never narrower than test "
            "sampling alone. Validation metrics come from each run's val_predictions.jsonl (the validation pass "
            "metrics.json reports: the selected checkpoint's). Runs on the same validation examples get the same "
            "formula; under k-fold each fold validates on its own examples (nested in the runs), so the runs' spread "
            "already holds validation sampling: t(F-1) s_runs/sqrt(n) over the F folds (a fold's seeds averaged "
            "first), never narrower than validation sampling alone; one run: validation sampling only; runs without "
            "val_predictions.jsonl: a t interval over runs. Comparisons are paired on shared "
            f"(fold, seed) runs and test examples (the same decomposition on the differences; one run each on "
            f"accuracy: exact McNemar; no predictions: exact sign-flip over runs), this row minus the other; "
            f"p-values are Holm-corrected over the {count} comparisons in this table (the intervals are each 95%); "
            f"`*` marks Holm p < {SIGNIFICANCE}.")


def _low_n_note(summary: pd.DataFrame) -> list[str]:
    low = summary[summary["n"] < LOW_N]
    if low.empty:
        return []
    return [f"**Low n:** {len(low)} row(s) have fewer than {LOW_N} runs. With 2 runs the run variance has 1 degree "
            "of freedom and the interval uses t(1) = 12.7 on it: wide and conservative; with 1 run it covers test "
            "sampling only. Add folds or seeds to narrow them."]


def task_lines(rows: pd.DataFrame, group_by: Sequence[str]) -> list[str]:
    """One task's notes, table, resolution and warnings, as paragraphs."""
    metric = reported_metric(rows)
    return [*ranking_notes(rows, metric), _method_note(rows, metric), markdown_table(rows, group_by, metric),
            resolution_line(rows, metric), *_low_n_note(rows)]


def missing_lines(summary: pd.DataFrame, group_by: Sequence[str]) -> list[str]:
    """`configuration method=..., init=... is missing fold 3` for each configuration short of a fold (led by
    `task=...` when the summary holds several tasks)."""
    keys = [TASK, *group_by] if TASK in summary and TASK not in group_by else list(group_by)
    keys = [key for key in keys if key in summary]
    return [f"configuration {', '.join(f'{key}={cell(row[key])}' for key in keys)} is missing {row['missing']}"
            for row in summary.to_dict("records") if row["missing"]]


def incomplete_section(incomplete: Sequence[Incomplete], missing: Sequence[str]) -> str:
    """Missing/failed jobs, listed by path so they can be rerun, and the configurations short of a fold."""
    if not incomplete and not missing:
        return "## Incomplete\n\nNone: every job wrote a readable metrics.json and every configuration has every fold."
    items = "\n".join([*(f"- `{job.path}`: {job.reason}" for job in incomplete), *(f"- {line}" for line in missing)])
    return f"## Incomplete\n\n{len(incomplete)} missing/failed job(s), {len(missing)} configuration(s) short " \
           f"of a fold:\n\n{items}"


def markdown_report(collection: Collection, summary: pd.DataFrame, group_by: Sequence[str],
                    metric: str | None = None) -> str:
    """results.md: per task what chose and what is reported, how to read the intervals and tests, the table and
    its resolution, then the incomplete jobs. The metrics are the ones the summary records (`metric` is accepted
    for older callers)."""
    sections = task_sections(summary)
    if len(sections) == 1:
        parts = [f"# Sweep results\n\n{len(collection.runs)} runs in {len(summary)} configurations.",
                 *task_lines(summary, group_by)]
    else:
        names = ", ".join(cell(task) for task, _ in sections)
        parts = [f"# Sweep results\n\n{len(collection.runs)} runs in {len(summary)} configurations of "
                 f"{len(sections)} tasks ({names}). Each task has its own table: its configurations are ranked, "
                 "chosen and tested against each other, never against another task's."]
        parts += ["\n\n".join([f"## Task {cell(task)}", *task_lines(rows, group_by)]) for task, rows in sections]
    return "\n\n".join([*parts, incomplete_section(collection.incomplete, missing_lines(summary, group_by))]) + "\n"


def interval_caption(summary_rows: pd.DataFrame, metric: str) -> str:
    """What a plot's bars are (the table's intervals)."""
    kinds = {_kind(row, metric) for row in summary_rows.to_dict("records")}
    return "; ".join(covers(kind, metric) for kind in sorted(kinds or {RUNS_ONLY}))
