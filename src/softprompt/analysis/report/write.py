"""A whole report: collect the runs, summarize them (each task on its own), write results.csv, results.md and the
plots, tell the user what was written (and what is incomplete), and optionally log it to wandb."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from softprompt.analysis.report.collect import Collection, ReportError, collect_runs
from softprompt.analysis.report.ensemble import ensemble_markdown, ensemble_table
from softprompt.analysis.report.plots import write_plots
from softprompt.analysis.report.selection import resolve_tune
from softprompt.analysis.report.statistics import (
    check_group_by,
    check_metric,
    default_group_by,
    group_keys,
    summarize,
    with_task,
)
from softprompt.analysis.report.tables import cell, markdown_report, missing_lines, task_lines, task_sections
from softprompt.training.loggers import wandb_mode
from softprompt.training.results import METRICS_FILE


@dataclass
class Report:
    """What write_report produced, so the caller can tell the user."""

    written: list[Path] = field(default_factory=list)
    plots: list[Path] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def _the_one(column: pd.Series) -> str | None:
    """The value every row has, or None (each task's own default) when the tasks differ."""
    values = column.unique()
    return str(values[0]) if len(values) == 1 else None


def write_report(collection: Collection, summary: pd.DataFrame, out_dir: Path, group_by: Sequence[str],
                 metric: str | None = None, tune: Sequence[str] = ()) -> Report:
    """results.csv, results.md and the plots the data supports (per task), in out_dir. The metrics are those the
    summary records (`metric` is accepted for older callers); `tune`: the nested-selection keys."""
    out_dir.mkdir(parents=True, exist_ok=True)
    report = Report()
    summary.to_csv(out_dir / "results.csv", index=False)
    (out_dir / "results.md").write_text(markdown_report(collection, summary, group_by))
    report.written += [out_dir / "results.csv", out_dir / "results.md"]
    report.plots, report.skipped = write_plots(collection.runs, group_by, _the_one(summary["p_vs_best_on"]),
                                               _the_one(summary["ranked_by"]), out_dir, tune)
    return report


def log_to_wandb(summary: pd.DataFrame, images: Sequence[Path], out_dir: Path) -> None:
    """Table and plots to a wandb run; offline when no API key is set, so it never blocks on a login."""
    import wandb

    run = wandb.init(project=os.environ.get("WANDB_PROJECT", "softprompt"), job_type="report", mode=wandb_mode(),
                     dir=str(out_dir))
    run.log({"results": wandb.Table(dataframe=summary), **{p.stem: wandb.Image(str(p)) for p in images}})
    run.finish()


def print_summary(collection: Collection, summary: pd.DataFrame, group_by: Sequence[str], metric: str | None,
                  report: Report) -> None:
    """What the user needs on stdout: per task what chose and the table, incomplete jobs and folds (never silent),
    files. The metrics are those the summary records."""
    sections = task_sections(summary)
    for task, rows in sections:
        if len(sections) > 1:
            print(f"\ntask {cell(task)}:")
        print("\n\n".join(task_lines(rows, group_by)))
    print(f"\n{len(collection.runs)} runs collected; {len(collection.incomplete)} incomplete job(s)")
    for job in collection.incomplete:
        print(f"  incomplete: {job.path}: {job.reason}")
    for line in missing_lines(summary, group_by):
        print(f"  {line}")
    for path in [*report.written, *report.plots]:
        print(f"wrote {path}")
    for line in report.skipped:
        print(line)


def run_report(paths: Sequence[str | Path], out: Path | None = None, group_by: str | Sequence[str] | None = None,
               metric: str | None = None, rank_by: str | None = None, wandb: bool = False,
               ensemble: str | None = None, tune: str | Sequence[str] | None = None) -> Report:
    """The whole report, as softprompt-report makes it; raises ReportError on bad input.

    paths: run dirs, sweep dirs (searched recursively) or metrics.json files. out: the output dir (None: the first
    path, or the current dir if it is a file). group_by: keys (None: the settings that vary within a task).
    metric: reported and paired-tested (None: each task's test/<selection metric>). rank_by: ranks and chooses
    (None: each task's validation selection metric; a test metric is flagged as optimistic). Each task (a mixture
    is one) is ranked, tested and plotted on its own. wandb: also log the table and plots to wandb. ensemble: a vote
    (mean, majority): also each configuration's runs alone against their ensemble (softprompt.analysis.report.ensemble).
    tune: keys (e.g. `lr`) chosen inside each fold and seed by its validation, whose test is reported (nested
    selection: a row estimates "the method with lr tuned").
    """
    collection = collect_runs(paths)
    if not collection.runs:
        raise ReportError(f"no runs found: no readable {METRICS_FILE} under {', '.join(map(str, paths))} "
                          f"({len(collection.incomplete)} incomplete job(s)); pass run or sweep dirs")
    runs = collection.runs
    group_by = check_group_by(group_by, runs) if group_by else default_group_by(runs)
    metric = check_metric(metric, runs) if metric else None  # None: each task's own
    rank_by = check_metric(rank_by, runs, "rank_by") if rank_by else None
    tuned = resolve_tune(tune, group_keys(runs)) if tune else []
    group_by = [key for key in group_by if key not in tuned] or ["method"]
    first = Path(paths[0])
    out_dir = out or (Path.cwd() if first.is_file() else first)
    summary = summarize(runs, group_by, metric, rank_by, tuned)
    report = write_report(collection, summary, out_dir, group_by, metric, tuned)
    print_summary(collection, summary, group_by, metric, report)
    if ensemble:
        members_by = with_task(group_by, runs)  # an ensemble's members are runs of one task
        table = ensemble_table(runs, members_by, ensemble)
        text = ensemble_markdown(table, members_by, ensemble)
        table.to_csv(out_dir / "ensemble.csv", index=False)
        (out_dir / "ensemble.md").write_text(text)
        report.written += [out_dir / "ensemble.csv", out_dir / "ensemble.md"]
        print(f"\n{text}wrote {out_dir / 'ensemble.csv'}\nwrote {out_dir / 'ensemble.md'}")
    if wandb:
        log_to_wandb(summary, report.plots, out_dir)
    return report
