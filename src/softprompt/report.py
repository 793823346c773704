"""softprompt-report: aggregate the metrics.json files of a sweep into tables, paired tests and plots.

Only metrics.json files are read, so a report never needs the model, the data or the training config.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from softprompt.errors import SoftPromptError
from softprompt.run_results import CV_METRICS_FILE, FOLD_DIR_PREFIX, METRICS_FILE
from softprompt.wandb_mode import wandb_mode

PROG = "softprompt-report"
SETTING_KEYS = ("method", "backbone", "task", "num_virtual_tokens", "init", "lr")
PAIR_KEYS = ("fold", "seed")
STAGES = ("val", "test")
METHOD_CONFIG = "method_config"
HYDRA_DIR = ".hydra"
SIGNIFICANCE = 0.05
CI_LEVEL = 0.975  # two-sided 95% interval
SCALAR = (str, int, float, bool, type(None))


class ReportError(SoftPromptError):
    """A bad argument or input; shown as one `softprompt-report: error: ...` line, exit status 2."""


@dataclass(frozen=True)
class Incomplete:
    """A job that produced no usable metrics.json; listed in the report so it is never dropped silently."""

    path: Path
    reason: str


@dataclass
class Collection:
    """Runs found under the given paths (flat records) plus the jobs that did not finish."""

    runs: list[dict[str, Any]] = field(default_factory=list)
    incomplete: list[Incomplete] = field(default_factory=list)


@dataclass
class Report:
    """What write_report produced, so main can tell the user."""

    written: list[Path] = field(default_factory=list)
    plots: list[Path] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


# ----------------------------------------------------------------------------------------------- collecting runs


def _flatten(mapping: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    """Nested config -> `prefix.a.b` scalar keys; lists and other containers are not settings one groups by."""
    flat: dict[str, Any] = {}
    for key, value in mapping.items():
        name = f"{prefix}.{key}"
        if isinstance(value, Mapping):
            flat.update(_flatten(value, name))
        elif isinstance(value, SCALAR):
            flat[name] = value
    return flat


def run_record(data: Mapping[str, Any], path: Path) -> dict[str, Any]:
    """One metrics.json as a flat record (`val/acc`, `method_config.lr`, ...), so runs group like table rows."""
    record: dict[str, Any] = {key: data.get(key) for key in (*SETTING_KEYS, *PAIR_KEYS)}
    record |= {key: data.get(key) for key in ("trainable_params", "wall_seconds", "selection_metric", "num_folds")}
    record |= _flatten(data.get(METHOD_CONFIG) or {}, METHOD_CONFIG)
    for stage in STAGES:
        for name, value in (data.get(stage) or {}).items():
            if isinstance(value, int | float) and not isinstance(value, bool):
                record[f"{stage}/{name}"] = float(value)
    record["path"] = str(path)
    return record


def _load_run(metrics_path: Path) -> dict[str, Any] | Incomplete:
    """Parse one metrics.json; an unreadable or malformed file becomes an Incomplete entry, not a crash."""
    run_dir = metrics_path.parent
    try:
        data = json.loads(metrics_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        return Incomplete(run_dir, f"unreadable {METRICS_FILE}: {error}")
    if not isinstance(data, dict) or "method" not in data:
        return Incomplete(run_dir, f"malformed {METRICS_FILE}: not an object with a 'method' key")
    if not any(isinstance(data.get(stage), dict) for stage in STAGES):
        return Incomplete(run_dir, f"malformed {METRICS_FILE}: no 'val' or 'test' metrics")
    return run_record(data, run_dir)


def _unfinished_cv_job(job_dir: Path, dirnames: Sequence[str], filenames: Sequence[str]) -> Incomplete | None:
    """A cv.mode=all job (folds under fold_<k>/) that stopped before writing its fold mean."""
    folds = sorted(d for d in dirnames if d.startswith(FOLD_DIR_PREFIX))
    if CV_METRICS_FILE in filenames:
        return None
    done = [d for d in folds if (job_dir / d / METRICS_FILE).is_file()]
    return Incomplete(job_dir, f"cv.mode=all job stopped before {CV_METRICS_FILE}; finished folds: "
                               f"{', '.join(done) or 'none'}")


def _scan(root: Path) -> Iterable[tuple[Path, dict[str, Any] | Incomplete]]:
    """(run dir, run or Incomplete) for every dir under root with metrics.json and every Hydra job folder.
    A cv.mode=all job is read through its fold dirs, and listed itself only when it did not finish."""
    for dirpath, dirnames, filenames in os.walk(root):
        run_dir, is_job = Path(dirpath), HYDRA_DIR in dirnames
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        if METRICS_FILE in filenames:
            yield run_dir, _load_run(run_dir / METRICS_FILE)
        elif is_job and (CV_METRICS_FILE in filenames or any(d.startswith(FOLD_DIR_PREFIX) for d in dirnames)):
            unfinished = _unfinished_cv_job(run_dir, dirnames, filenames)
            if unfinished:
                yield run_dir, unfinished
        elif is_job:
            yield run_dir, Incomplete(run_dir, f"no {METRICS_FILE} (job missing or failed)")


def collect_runs(paths: Sequence[str | Path]) -> Collection:
    """All runs under `paths` (run dirs, sweep dirs or metrics.json files), plus missing/failed jobs."""
    found: dict[Path, dict[str, Any] | Incomplete] = {}
    for raw in paths:
        path = Path(raw)
        if path.is_file():
            found[path.parent.resolve()] = _load_run(path)
        elif path.is_dir():
            for run_dir, entry in _scan(path):
                found[run_dir.resolve()] = entry
        else:
            raise ReportError(f"path {str(raw)!r} does not exist; pass run dirs, sweep dirs or metrics.json files")
    collection = Collection()
    for _, entry in sorted(found.items()):
        (collection.incomplete if isinstance(entry, Incomplete) else collection.runs).append(entry)
    return collection


# ------------------------------------------------------------------------------------------------ keys and metrics


def _distinct(runs: Iterable[Mapping[str, Any]], keys: Sequence[str]) -> int:
    """How many configurations `keys` split the runs into."""
    return len({tuple(run.get(key) for key in keys) for run in runs})


def group_keys(runs: Sequence[Mapping[str, Any]]) -> list[str]:
    """Keys allowed for --group-by: the settings plus every method_config scalar (never fold/seed)."""
    extra = sorted({key for run in runs for key in run if key.startswith(f"{METHOD_CONFIG}.")})
    return [*SETTING_KEYS, *extra]


def default_group_by(runs: Sequence[Mapping[str, Any]]) -> list[str]:
    """The settings that vary; method_config keys only when they split configs further (most mirror settings)."""
    keys = [key for key in SETTING_KEYS if _distinct(runs, [key]) > 1]
    for key in group_keys(runs)[len(SETTING_KEYS):]:
        if _distinct(runs, [*keys, key]) > _distinct(runs, keys):
            keys.append(key)
    return keys or ["method"]


def available_metrics(runs: Iterable[Mapping[str, Any]]) -> list[str]:
    """`stage/name` metrics present in at least one run."""
    return sorted({key for run in runs for key in run if key.split("/", 1)[0] in STAGES and "/" in key})


def default_metric(runs: Sequence[Mapping[str, Any]]) -> str:
    """`test/<primary>` from the runs' selection_metric (val/acc -> test/acc): report what model selection used."""
    selections = sorted({str(run.get("selection_metric")) for run in runs if run.get("selection_metric")})
    if len(selections) != 1:
        raise ReportError(f"cannot pick a default metric: runs use selection metrics {selections or 'none'}; "
                          f"pass --metric, one of: {', '.join(available_metrics(runs))}")
    return "test/" + selections[0].split("/", 1)[-1]


def parse_group_by(text: str, runs: Sequence[Mapping[str, Any]]) -> list[str]:
    """Comma-separated --group-by value, checked against the keys the runs have."""
    keys = list(dict.fromkeys(part.strip() for part in text.split(",") if part.strip()))
    allowed = group_keys(runs)
    unknown = [key for key in keys if key not in allowed]
    if not keys or unknown:
        raise ReportError(f"unknown group key {(unknown[0] if unknown else text)!r}; allowed: {', '.join(allowed)}")
    return keys


def check_metric(metric: str, runs: Sequence[Mapping[str, Any]]) -> str:
    """--metric must be `stage/name` and present in the runs."""
    allowed = available_metrics(runs)
    if metric not in allowed:
        raise ReportError(f"unknown metric {metric!r}; allowed: {', '.join(allowed)}")
    return metric


# ---------------------------------------------------------------------------------------------------- statistics


def mean_std_ci(values: Sequence[float]) -> tuple[float, float, float]:
    """Mean, sample std (0 for one value) and t-based 95% CI half-width (NaN below two values)."""
    arr = np.asarray(values, dtype=float)
    if arr.size == 0:
        return math.nan, math.nan, math.nan
    if arr.size == 1:
        return float(arr[0]), 0.0, math.nan
    std = float(arr.std(ddof=1))
    ci = float(stats.t.ppf(CI_LEVEL, arr.size - 1) * std / math.sqrt(arr.size))
    return float(arr.mean()), std, ci


def _values(runs: Iterable[Mapping[str, Any]], key: str) -> list[float]:
    """The numeric values of `key` over runs, skipping runs that lack it."""
    return [float(run[key]) for run in runs if isinstance(run.get(key), int | float)]


def _by_pair(runs: Iterable[Mapping[str, Any]], metric: str) -> dict[tuple[Any, Any], float]:
    """metric per (fold, seed); repeated pairs are averaged so each pair counts once."""
    buckets: dict[tuple[Any, Any], list[float]] = {}
    for run in runs:
        if isinstance(run.get(metric), float):
            buckets.setdefault((run.get("fold"), run.get("seed")), []).append(run[metric])
    return {pair: float(np.mean(values)) for pair, values in buckets.items()}


def paired_test(best: Sequence[Mapping[str, Any]], other: Sequence[Mapping[str, Any]],
                metric: str) -> tuple[float, int]:
    """Paired t-test p-value over the (fold, seed) pairs both configs ran, and the pair count (NaN below 2)."""
    a, b = _by_pair(best, metric), _by_pair(other, metric)
    pairs = sorted(a.keys() & b.keys(), key=repr)
    if len(pairs) < 2:
        return math.nan, len(pairs)
    with np.errstate(all="ignore"):
        p_value = stats.ttest_rel([a[p] for p in pairs], [b[p] for p in pairs]).pvalue
    return float(p_value), len(pairs)


def expected_pairs(runs: Sequence[Mapping[str, Any]]) -> set[tuple[Any, Any]]:
    """The (fold, seed) pairs every configuration should have: all folds of the split x every seed seen."""
    seeds = {run.get("seed") for run in runs}
    folds: set[Any] = {run.get("fold") for run in runs}
    for num_folds in {run.get("num_folds") for run in runs if isinstance(run.get("num_folds"), int)}:
        folds |= set(range(num_folds))
    return {(fold, seed) for fold in folds for seed in seeds}


def missing_pairs(members: Sequence[Mapping[str, Any]], expected: set[tuple[Any, Any]]) -> str:
    """`fold 3` / `fold 3 seed 1` for each expected pair a configuration lacks (a killed or failed job)."""
    have = {(run.get("fold"), run.get("seed")) for run in members}
    seeds = {seed for _, seed in expected}
    return ", ".join(f"fold {fold}" + (f" seed {seed}" if len(seeds) > 1 else "")
                     for fold, seed in sorted(expected - have, key=repr))


def _summary_row(settings: dict[str, Any], members: Sequence[Mapping[str, Any]],
                 metrics: Sequence[str], expected: set[tuple[Any, Any]]) -> dict[str, Any]:
    """One configuration: n, the folds it lacks, mean/std/CI of every metric, mean cost."""
    row: dict[str, Any] = {**settings, "n": len(members), "missing": missing_pairs(members, expected)}
    for metric in metrics:
        row[f"{metric}_mean"], row[f"{metric}_std"], row[f"{metric}_ci95"] = mean_std_ci(_values(members, metric))
    for key in ("trainable_params", "wall_seconds"):
        values = _values(members, key)
        row[f"{key}_mean"] = float(np.mean(values)) if values else math.nan
    return row


def _sort_key(mean: float, metric: str) -> tuple[bool, float]:
    """Best first (highest, or lowest for a loss), NaN last."""
    if math.isnan(mean):
        return (True, 0.0)
    return (False, mean if metric.rsplit("/", 1)[-1] == "loss" else -mean)


def summarize(runs: Sequence[Mapping[str, Any]], group_by: Sequence[str], metric: str) -> pd.DataFrame:
    """One row per configuration (runs equal on `group_by`; folds and seeds pooled), best `metric` first,
    with a paired t-test of the best configuration against each other one."""
    groups: dict[tuple[Any, ...], list[Mapping[str, Any]]] = {}
    for run in runs:
        groups.setdefault(tuple(run.get(key) for key in group_by), []).append(run)
    metrics, expected = available_metrics(runs), expected_pairs(runs)
    rows = [(members, _summary_row(dict(zip(group_by, key, strict=True)), members, metrics, expected))
            for key, members in groups.items()]
    rows.sort(key=lambda item: _sort_key(item[1][f"{metric}_mean"], metric))
    best = rows[0][0]
    for index, (members, row) in enumerate(rows):
        row["is_best"] = index == 0
        row["p_vs_best"], row["pairs_vs_best"] = (math.nan, len(_by_pair(best, metric))) if index == 0 else \
            paired_test(best, members, metric)
    return pd.DataFrame([row for _, row in rows])


def best_per(runs: Sequence[Mapping[str, Any]], group_by: Sequence[str], metric: str,
             keys: Sequence[str]) -> pd.DataFrame:
    """Best configuration for each value of `keys` (other hyper-parameters chosen by `metric`), for plots."""
    summary = summarize(runs, list(dict.fromkeys([*keys, *group_by])), metric)
    return summary.drop_duplicates(subset=list(keys), keep="first")


# ------------------------------------------------------------------------------------------------------ markdown


def _is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _cell(value: Any) -> str:
    """A setting as a table cell: integers without `.0`, missing as `-`."""
    if _is_missing(value):
        return "-"
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() and abs(value) >= 1 else f"{value:g}"
    return str(value)


def _mean_ci(mean: float, ci: float) -> str:
    if _is_missing(mean):
        return "-"
    return f"{mean:.4f}" if _is_missing(ci) else f"{mean:.4f} ± {ci:.4f}"


def _p_cell(row: Mapping[str, Any]) -> str:
    """`best`, `n/a` (fewer than 2 pairs or undefined) or the p-value with `*` when significant."""
    if row["is_best"]:
        return "best"
    p_value = row["p_vs_best"]
    if _is_missing(p_value):
        return "n/a"
    return f"{p_value:.3g}" + ("*" if p_value < SIGNIFICANCE else "")


def markdown_table(summary: pd.DataFrame, group_by: Sequence[str], metric: str) -> str:
    """The results table: settings, n, metric mean ± 95% CI, cost, p vs best."""
    show_missing = bool(summary["missing"].astype(bool).any())  # the column only when a sweep is incomplete
    header = [*group_by, "n", *(["missing"] if show_missing else []), f"{metric} (mean ± 95% CI)",
              "trainable params", "wall s", "p vs best"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in summary.to_dict("records"):
        params, wall = row["trainable_params_mean"], row["wall_seconds_mean"]
        cells = [*(_cell(row[key]) for key in group_by), str(row["n"]), *([row["missing"]] if show_missing else []),
                 _mean_ci(row[f"{metric}_mean"], row[f"{metric}_ci95"]),
                 "-" if _is_missing(params) else f"{round(params):,}", "-" if _is_missing(wall) else f"{wall:.1f}",
                 _p_cell(row)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def incomplete_section(incomplete: Sequence[Incomplete], missing: Sequence[str]) -> str:
    """Missing/failed jobs, listed by path so they can be rerun, and the configurations short of a fold."""
    if not incomplete and not missing:
        return "## Incomplete\n\nNone: every job wrote a readable metrics.json and every configuration has every fold."
    items = "\n".join([*(f"- `{job.path}`: {job.reason}" for job in incomplete), *(f"- {line}" for line in missing)])
    return f"## Incomplete\n\n{len(incomplete)} missing/failed job(s), {len(missing)} configuration(s) short " \
           f"of a fold:\n\n{items}"


def markdown_report(collection: Collection, summary: pd.DataFrame, group_by: Sequence[str], metric: str) -> str:
    """results.md: how to read the table, the table, then the incomplete jobs."""
    intro = (f"# Sweep results\n\n{len(collection.runs)} runs in {len(summary)} configurations, sorted by {metric}. "
             f"`p vs best`: paired t-test over shared (fold, seed) pairs; `*` marks p < {SIGNIFICANCE}.")
    table = markdown_table(summary, group_by, metric)
    return f"{intro}\n\n{table}\n\n{incomplete_section(collection.incomplete, missing_lines(summary, group_by))}\n"


# --------------------------------------------------------------------------------------------------------- plots


def _pyplot() -> Any:
    """matplotlib on the file-only Agg backend, imported only when plotting."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _errors(frame: pd.DataFrame, metric: str) -> np.ndarray:
    """95% CI half-widths as error bars; none (0) where a point has a single run."""
    return frame[f"{metric}_ci95"].fillna(0.0).to_numpy(dtype=float)


def _label(value: Any) -> str:
    return "none" if _is_missing(value) else _cell(value)


def _plot_prompt_length(data: pd.DataFrame, metric: str, path: Path) -> None:
    """Lester et al. Fig. 3 layout: metric vs prompt length, a line per init, a panel per method."""
    plt = _pyplot()
    methods = sorted(data["method"].unique(), key=str)
    fig, axes = plt.subplots(1, len(methods), figsize=(4.5 * len(methods), 3.8), sharey=True, squeeze=False)
    lengths = data["num_virtual_tokens"].astype(float)
    log_x = lengths.min() > 0 and lengths.max() / lengths.min() > 10
    for ax, method in zip(axes[0], methods, strict=True):
        panel = data[data["method"] == method]
        for init in sorted(panel["init"].unique(), key=str):
            line = panel[panel["init"].isna()] if _is_missing(init) else panel[panel["init"] == init]
            line = line.sort_values("num_virtual_tokens")
            ax.errorbar(line["num_virtual_tokens"].astype(float), line[f"{metric}_mean"], yerr=_errors(line, metric),
                        marker="o", capsize=3, label=_label(init))
        ax.set(title=str(method), xlabel="prompt length (virtual tokens)", xscale="log" if log_x else "linear")
        ax.legend(title="init", fontsize="small")
    axes[0][0].set_ylabel(f"{metric} (95% CI)")
    _save(fig, path)


def _plot_methods(data: pd.DataFrame, metric: str, path: Path) -> None:
    """Bar per method at its best configuration, with 95% CI error bars."""
    plt = _pyplot()
    data = data.sort_values(f"{metric}_mean", ascending=False)
    fig, ax = plt.subplots(figsize=(max(4.0, 1.3 * len(data)), 3.8))
    ax.bar([str(m) for m in data["method"]], data[f"{metric}_mean"], yerr=_errors(data, metric), capsize=4)
    ax.set(ylabel=f"{metric} (95% CI)", title="best configuration per method")
    ax.tick_params(axis="x", labelrotation=20)
    _save(fig, path)


def _plot_lr(data: pd.DataFrame, metric: str, path: Path) -> None:
    """Metric vs learning rate (log x), a line per method."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for method in sorted(data["method"].unique(), key=str):
        line = data[data["method"] == method].sort_values("lr")
        ax.errorbar(line["lr"].astype(float), line[f"{metric}_mean"], yerr=_errors(line, metric),
                    marker="o", capsize=3, label=str(method))
    ax.set(xscale="log", xlabel="learning rate", ylabel=f"{metric} (95% CI)")
    ax.legend(fontsize="small")
    _save(fig, path)


def _save(fig: Any, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    _pyplot().close(fig)


PLOTS = (  # file, x variable, keys each point is the best configuration for, drawer
    ("metric_vs_prompt_length.png", "num_virtual_tokens", ("method", "init", "num_virtual_tokens"),
     _plot_prompt_length),
    ("method_comparison.png", "method", ("method",), _plot_methods),
    ("metric_vs_lr.png", "lr", ("method", "lr"), _plot_lr),
)


def write_plots(runs: Sequence[Mapping[str, Any]], group_by: Sequence[str], metric: str,
                out_dir: Path, report: Report) -> None:
    """Each plot whose x variable has >= 2 distinct values; the others are recorded as skipped, with why."""
    for filename, x_key, keys, draw in PLOTS:
        data = best_per(runs, group_by, metric, keys)
        data = data[data[x_key].notna() & data[f"{metric}_mean"].notna()]
        distinct = data[x_key].nunique()
        if distinct < 2:
            report.skipped.append(f"skipped {filename}: {x_key} has {distinct} distinct value(s), need >= 2")
            continue
        draw(data, metric, out_dir / filename)
        report.plots.append(out_dir / filename)


# ------------------------------------------------------------------------------------------------ report and CLI


def write_report(collection: Collection, summary: pd.DataFrame, out_dir: Path, group_by: Sequence[str],
                 metric: str) -> Report:
    """results.csv, results.md and the plots the data supports, in out_dir."""
    out_dir.mkdir(parents=True, exist_ok=True)
    report = Report()
    summary.to_csv(out_dir / "results.csv", index=False)
    (out_dir / "results.md").write_text(markdown_report(collection, summary, group_by, metric))
    report.written += [out_dir / "results.csv", out_dir / "results.md"]
    write_plots(collection.runs, group_by, metric, out_dir, report)
    return report


def log_to_wandb(summary: pd.DataFrame, images: Sequence[Path], out_dir: Path) -> None:
    """Table and plots to a wandb run; offline when no API key is set, so it never blocks on a login."""
    import wandb

    run = wandb.init(project=os.environ.get("WANDB_PROJECT", "softprompt"), job_type="report", mode=wandb_mode(),
                     dir=str(out_dir))
    run.log({"results": wandb.Table(dataframe=summary), **{p.stem: wandb.Image(str(p)) for p in images}})
    run.finish()


class _Parser(argparse.ArgumentParser):
    """argparse that reports usage errors as the same single line as other bad arguments."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description="Aggregate sweep runs (metrics.json) into tables, tests and plots.")
    parser.add_argument("paths", nargs="+", metavar="PATH", help="run dir, sweep dir (searched recursively) "
                        "or metrics.json")
    parser.add_argument("--out", type=Path, help="output dir (default: the first PATH, or cwd if it is a file)")
    parser.add_argument("--group-by", help="comma-separated keys (default: the settings that vary)")
    parser.add_argument("--metric", help="stage/name to rank by (default: test/<selection metric>)")
    parser.add_argument("--wandb", action="store_true", help="also log the table and plots to wandb")
    return parser


def missing_lines(summary: pd.DataFrame, group_by: Sequence[str]) -> list[str]:
    """`configuration method=..., init=... is missing fold 3` for each configuration short of a fold."""
    return [f"configuration {', '.join(f'{key}={_cell(row[key])}' for key in group_by)} is missing {row['missing']}"
            for row in summary.to_dict("records") if row["missing"]]


def _print_summary(collection: Collection, summary: pd.DataFrame, group_by: Sequence[str], metric: str,
                   report: Report) -> None:
    """What the user needs on stdout: the table, incomplete jobs and folds (never silent), files, skipped plots."""
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


def run_report(args: argparse.Namespace) -> Report:
    """The whole report for parsed arguments; raises ReportError on bad input."""
    collection = collect_runs(args.paths)
    if not collection.runs:
        raise ReportError(f"no runs found: no readable {METRICS_FILE} under {', '.join(map(str, args.paths))} "
                          f"({len(collection.incomplete)} incomplete job(s)); pass run or sweep dirs")
    group_by = parse_group_by(args.group_by, collection.runs) if args.group_by else default_group_by(collection.runs)
    metric = check_metric(args.metric, collection.runs) if args.metric else default_metric(collection.runs)
    first = Path(args.paths[0])
    out_dir = args.out or (Path.cwd() if first.is_file() else first)
    summary = summarize(collection.runs, group_by, metric)
    report = write_report(collection, summary, out_dir, group_by, metric)
    _print_summary(collection, summary, group_by, metric, report)
    if args.wandb:
        log_to_wandb(summary, report.plots, out_dir)
    return report


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point: 0 on success; bad arguments exit 2 with one error line and no traceback."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        run_report(args)
    except ReportError as error:
        parser.exit(2, f"{PROG}: error: {error}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
