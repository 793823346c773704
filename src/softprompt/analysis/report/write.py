"""A whole report: collect the runs, summarize them, write results.csv, results.md and the plots, tell the user
what was written (and what is incomplete), and optionally log it to wandb."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from softprompt.analysis.report.collect import Collection, ReportError, collect_runs
from softprompt.analysis.report.ensemble import ensemble_markdown, ensemble_table
from softprompt.analysis.report.plots import write_plots
from softprompt.analysis.report.statistics import (
    check_group_by,
    check_metric,
    default_group_by,
    default_metric,
    default_rank_by,
    summarize,
)
from softprompt.analysis.report.tables import markdown_report, markdown_table, missing_lines, ranking_notes
from softprompt.training.loggers import wandb_mode
from softprompt.training.results import METRICS_FILE


@dataclass
class Report:
    """What write_report produced, so the caller can tell the user."""

    written: list[Path] = field(default_factory=list)
    plots: list[Path] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def write_report(collection: Collection, summary: pd.DataFrame, out_dir: Path, group_by: Sequence[str],
                 metric: str) -> Report:
    """results.csv, results.md and the plots the data supports, in out_dir."""
    out_dir.mkdir(parents=True, exist_ok=True)
    report = Report()
    summary.to_csv(out_dir / "results.csv", index=False)
    (out_dir / "results.md").write_text(markdown_report(collection, summary, group_by, metric))
    report.written += [out_dir / "results.csv", out_dir / "results.md"]
    report.plots, report.skipped = write_plots(collection.runs, group_by, metric, summary["ranked_by"].iloc[0],
                                               out_dir)
    return report


def log_to_wandb(summary: pd.DataFrame, images: Sequence[Path], out_dir: Path) -> None:
    """Table and plots to a wandb run; offline when no API key is set, so it never blocks on a login."""
    import wandb

    run = wandb.init(project=os.environ.get("WANDB_PROJECT", "softprompt"), job_type="report", mode=wandb_mode(),
                     dir=str(out_dir))
    run.log({"results": wandb.Table(dataframe=summary), **{p.stem: wandb.Image(str(p)) for p in images}})
    run.finish()


def print_summary(collection: Collection, summary: pd.DataFrame, group_by: Sequence[str], metric: str,
                  report: Report) -> None:
    """What the user needs on stdout: what chose, the table, incomplete jobs and folds (never silent), files."""
    print("\n".join(ranking_notes(summary, metric)))
    print(markdown_table(summary, group_by, metric))
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
               ensemble: str | None = None) -> Report:
    """The whole report, as softprompt-report makes it; raises ReportError on bad input.

    paths: run dirs, sweep dirs (searched recursively) or metrics.json files. out: the output dir (None: the first
    path, or the current dir if it is a file). group_by: keys (None: the settings that vary). metric: reported and
    paired-tested (None: test/<selection metric>). rank_by: ranks and chooses (None: the runs' validation selection
    metric; a test metric is flagged as optimistic). wandb: also log the table and plots to wandb. ensemble: a vote
    (mean, majority): also each configuration's runs alone against their ensemble (softprompt.analysis.report.ensemble).
    """
    collection = collect_runs(paths)
    if not collection.runs:
        raise ReportError(f"no runs found: no readable {METRICS_FILE} under {', '.join(map(str, paths))} "
                          f"({len(collection.incomplete)} incomplete job(s)); pass run or sweep dirs")
    runs = collection.runs
    group_by = check_group_by(group_by, runs) if group_by else default_group_by(runs)
    metric = check_metric(metric, runs) if metric else default_metric(runs)
    rank_by = check_metric(rank_by, runs, "rank_by") if rank_by else default_rank_by(runs)
    first = Path(paths[0])
    out_dir = out or (Path.cwd() if first.is_file() else first)
    summary = summarize(runs, group_by, metric, rank_by)
    report = write_report(collection, summary, out_dir, group_by, metric)
    print_summary(collection, summary, group_by, metric, report)
    if ensemble:
        table = ensemble_table(runs, group_by, ensemble)
        text = ensemble_markdown(table, group_by, ensemble)
        table.to_csv(out_dir / "ensemble.csv", index=False)
        (out_dir / "ensemble.md").write_text(text)
        report.written += [out_dir / "ensemble.csv", out_dir / "ensemble.md"]
        print(f"\n{text}wrote {out_dir / 'ensemble.csv'}\nwrote {out_dir / 'ensemble.md'}")
    if wandb:
        log_to_wandb(summary, report.plots, out_dir)
    return report
