"""softprompt-report: aggregate the metrics.json files of a sweep into tables, paired tests and plots.

    softprompt-report PATH... [out=DIR] [group_by=KEY,KEY] [metric=STAGE/NAME] [rank_by=STAGE/NAME] [wandb=true]
                      [ensemble=mean|majority] [tune=KEY,KEY]

PATH: a run dir, a sweep dir (searched recursively) or a metrics.json file; give one or more. Writes results.csv,
results.md and the plots the data supports into `out` (default the first PATH), and prints the table, the jobs
that did not finish and the files written. Configurations are ranked and chosen on validation; the test metric is
only reported for them. `tune=lr` chooses lr inside each fold on its validation and reports that fold's test
(nested selection), the way to compare methods whose hyperparameters differ. See softprompt.analysis.report.
"""

from __future__ import annotations

from collections.abc import Sequence

from softprompt.cli.args import Key, Tool, boolean, choice, comma_list, path, text

TOOL = Tool("softprompt-report", {
    "out": Key("output dir (default: the first PATH, or the current dir if it is a file)", path),
    "group_by": Key("comma-separated keys (default: the settings that vary)", comma_list()),
    "metric": Key("stage/name reported for the chosen configurations and paired-tested (default: "
                  "test/<selection metric>)", text),
    "rank_by": Key("stage/name that ranks and chooses configurations (default: the runs' validation selection "
                   "metric, e.g. val/acc; a test metric is flagged as optimistic)", text),
    "wandb": Key("true also logs the table and plots to wandb", boolean, default=False),
    "ensemble": Key("mean or majority: also each configuration's runs (every seed and fold) alone against their "
                    "ensemble on the test split (ensemble.md, ensemble.csv)", choice("mean", "majority")),
    "tune": Key("comma-separated keys (e.g. lr or optimizer.lr) chosen inside each fold and seed by its validation "
                "metric, that run's test reported: nested selection, a row per method with those keys tuned",
                comma_list()),
}, positional="PATH")


def main(argv: Sequence[str] | None = None) -> int:
    """0 on success; a bad argument or input is one `softprompt-report: error: ...` line and exit status 2."""
    args = TOOL.parse_or_exit(argv)
    from softprompt.analysis.report import ReportError, run_report  # heavy: pandas, scipy

    try:
        run_report(args.positional, out=args["out"], group_by=args["group_by"], metric=args["metric"],
                   rank_by=args["rank_by"], wandb=args["wandb"], ensemble=args["ensemble"],
                   tune=args["tune"])
    except ReportError as error:
        TOOL.fail(error)
    return 0


if __name__ == "__main__":
    main()
