"""softprompt-report: aggregate the metrics.json files of a sweep into tables, paired tests and plots.

Only metrics.json (and failed.json) files are read, so a report never needs the model, the data or the training
config. Configurations are ranked and chosen on validation; the test metric is only reported for them.

The modules, each importing only those above it:
- collect: finding runs (metrics.json as flat records) and the jobs that left none (failed.json, missing output);
- statistics: grouping keys, the ranking and reported metrics, bootstrap intervals, paired tests, summaries;
- tables: results.md and the printed table;
- plots: the figures (matplotlib only when drawing);
- write: the whole report (files, stdout, wandb). The command line is softprompt.cli.report.
"""

from softprompt.analysis.report.collect import Collection, Incomplete, ReportError, collect_runs, run_record
from softprompt.analysis.report.plots import build_figures, write_plots
from softprompt.analysis.report.statistics import (
    available_metrics,
    best_per,
    bootstrap_interval,
    check_group_by,
    check_metric,
    default_group_by,
    default_metric,
    default_rank_by,
    group_keys,
    paired_test,
    summarize,
)
from softprompt.analysis.report.tables import markdown_report, markdown_table, ranking_notes
from softprompt.analysis.report.write import Report, log_to_wandb, print_summary, run_report, write_report

__all__ = [
    "Collection",
    "Incomplete",
    "Report",
    "ReportError",
    "available_metrics",
    "best_per",
    "bootstrap_interval",
    "build_figures",
    "check_group_by",
    "check_metric",
    "collect_runs",
    "default_group_by",
    "default_metric",
    "default_rank_by",
    "group_keys",
    "log_to_wandb",
    "markdown_report",
    "markdown_table",
    "paired_test",
    "print_summary",
    "ranking_notes",
    "run_record",
    "run_report",
    "summarize",
    "write_plots",
    "write_report",
]
