"""softprompt-report: aggregate the metrics.json files of a sweep into tables, paired tests and plots.

Only metrics.json, failed.json, test_predictions.jsonl and val_predictions.jsonl files are read, so a report never
needs the model, the data or the training config. Configurations are ranked and chosen on validation (an interval
over runs and validation examples, nested in the folds under k-fold); the test metric is only reported for them,
with an interval over runs and test examples and paired, Holm-corrected comparisons.

The modules, each importing only those above it:
- collect: finding runs (metrics.json as flat records) and the jobs that left none (failed.json, missing output);
- outcomes: a run's test (validation) metric per example, rebuilt from its test_predictions.jsonl
  (val_predictions.jsonl);
- intervals: the crossed (runs x test examples) variance decomposition and Banerjee's interval; the nested one
  (examples within folds: k-fold validation);
- comparisons: each configuration's interval and paired comparisons (crossed, McNemar, sign-flip), Holm;
- selection: ranking order (natural-order ties) and nested selection (`tune=lr`);
- statistics: tasks (each ranked on its own), grouping keys, the ranking and reported metrics, summaries;
- tables: results.md and the printed table;
- plots: the figures (matplotlib only when drawing);
- write: the whole report (files, stdout, wandb). The command line is softprompt.cli.report.
"""

from softprompt.analysis.report.collect import Collection, Incomplete, ReportError, collect_runs, run_record
from softprompt.analysis.report.comparisons import Comparison, compare, config_spread, holm
from softprompt.analysis.report.intervals import Spread, crossed, half_width
from softprompt.analysis.report.plots import build_figures, write_plots
from softprompt.analysis.report.selection import nested, resolve_tune
from softprompt.analysis.report.statistics import (
    available_metrics,
    best_per,
    by_task,
    check_group_by,
    check_metric,
    default_group_by,
    default_metric,
    default_rank_by,
    group_keys,
    summarize,
)
from softprompt.analysis.report.tables import markdown_report, markdown_table, ranking_notes
from softprompt.analysis.report.write import Report, log_to_wandb, print_summary, run_report, write_report

__all__ = [
    "Collection",
    "Comparison",
    "Incomplete",
    "Report",
    "ReportError",
    "Spread",
    "available_metrics",
    "best_per",
    "build_figures",
    "by_task",
    "check_group_by",
    "check_metric",
    "collect_runs",
    "compare",
    "config_spread",
    "crossed",
    "default_group_by",
    "default_metric",
    "default_rank_by",
    "group_keys",
    "half_width",
    "holm",
    "log_to_wandb",
    "markdown_report",
    "markdown_table",
    "nested",
    "print_summary",
    "ranking_notes",
    "resolve_tune",
    "run_record",
    "run_report",
    "summarize",
    "write_plots",
    "write_report",
]
