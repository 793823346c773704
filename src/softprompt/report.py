"""softprompt-report: aggregate the metrics.json files of a sweep into tables, paired tests and plots.

Only metrics.json (and failed.json) files are read, so a report never needs the model, the data or the training
config. Configurations are ranked and chosen on validation; the test metric is only reported for them.
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
from softprompt.run_results import CV_METRICS_FILE, FAILED_FILE, FOLD_DIR_PREFIX, METRICS_FILE
from softprompt.wandb_mode import wandb_mode

PROG = "softprompt-report"
SETTING_KEYS = ("method", "backbone", "task", "num_virtual_tokens", "init", "lr")
PAIR_KEYS = ("fold", "seed")
STAGES = ("val", "test")
RANK_STAGE, REPORT_STAGE = "val", "test"  # choose on validation, report on test
METHOD_CONFIG = "method_config"
HYDRA_DIR = ".hydra"
SIGNIFICANCE = 0.05
INTERVAL_LEVEL = 0.95
BOOTSTRAP_RESAMPLES = 10_000
BOOTSTRAP_SEED = 0  # fixed, so the same runs always give the same interval
INTERVAL = "95% bootstrap interval over folds"
BOUNDED_METRICS = ("acc", "f1", "bleu", "rouge")  # names (or prefixes: rougeL, rouge1) of metrics in [0, 1]
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


def _failure(path: Path) -> str:
    """`failed: <error> (overrides: a=1 b=2)` from a failed.json, so the job can be fixed and rerun."""
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        return f"failed (unreadable {FAILED_FILE}: {error})"
    data = data if isinstance(data, dict) else {}
    overrides = " ".join(map(str, data.get("overrides") or []))
    return f"failed: {data.get('error') or 'no error recorded'}" + (f" (overrides: {overrides})" if overrides else "")


def _unfinished_cv_job(job_dir: Path, dirnames: Sequence[str], filenames: Sequence[str]) -> Incomplete | None:
    """A cv.mode=all job (folds under fold_<k>/) that stopped before writing its fold mean."""
    if CV_METRICS_FILE in filenames:
        return None
    done = [d for d in sorted(dirnames) if d.startswith(FOLD_DIR_PREFIX) and (job_dir / d / METRICS_FILE).is_file()]
    failed = f"{_failure(job_dir / FAILED_FILE)}; " if FAILED_FILE in filenames else ""
    return Incomplete(job_dir, f"{failed}cv.mode=all job stopped before {CV_METRICS_FILE}; finished folds: "
                               f"{', '.join(done) or 'none'}")


def _scan(root: Path) -> Iterable[tuple[Path, dict[str, Any] | Incomplete]]:
    """(run dir, run or Incomplete) for every dir under root with metrics.json or failed.json and every Hydra job
    folder. metrics.json beats a stale failed.json (a retry succeeded). A cv.mode=all job is read through its fold
    dirs, and listed itself only when it did not finish."""
    for dirpath, dirnames, filenames in os.walk(root):
        run_dir, is_job = Path(dirpath), HYDRA_DIR in dirnames
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        if METRICS_FILE in filenames:
            yield run_dir, _load_run(run_dir / METRICS_FILE)
        elif is_job and (CV_METRICS_FILE in filenames or any(d.startswith(FOLD_DIR_PREFIX) for d in dirnames)):
            unfinished = _unfinished_cv_job(run_dir, dirnames, filenames)
            if unfinished:
                yield run_dir, unfinished
        elif FAILED_FILE in filenames:
            yield run_dir, Incomplete(run_dir, _failure(run_dir / FAILED_FILE))
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


def _selection_name(runs: Sequence[Mapping[str, Any]], flag: str) -> str:
    """`acc` from the runs' selection_metric (`val/acc`); it must be the same for every run."""
    selections = sorted({str(run.get("selection_metric")) for run in runs if run.get("selection_metric")})
    if len(selections) != 1:
        raise ReportError(f"cannot pick a default {flag}: runs use selection metrics {selections or 'none'}; "
                          f"pass {flag}, one of: {', '.join(available_metrics(runs))}")
    return selections[0].split("/", 1)[-1]


def default_metric(runs: Sequence[Mapping[str, Any]]) -> str:
    """The reported metric: `test/<selection name>` (val/acc -> test/acc)."""
    return f"{REPORT_STAGE}/{_selection_name(runs, '--metric')}"


def default_rank_by(runs: Sequence[Mapping[str, Any]]) -> str:
    """The metric configurations are chosen by: the runs' validation selection metric (`val/acc`)."""
    return f"{RANK_STAGE}/{_selection_name(runs, '--rank-by')}"


def parse_group_by(text: str, runs: Sequence[Mapping[str, Any]]) -> list[str]:
    """Comma-separated --group-by value, checked against the keys the runs have."""
    keys = list(dict.fromkeys(part.strip() for part in text.split(",") if part.strip()))
    allowed = group_keys(runs)
    unknown = [key for key in keys if key not in allowed]
    if not keys or unknown:
        raise ReportError(f"unknown group key {(unknown[0] if unknown else text)!r}; allowed: {', '.join(allowed)}")
    return keys


def check_metric(metric: str, runs: Sequence[Mapping[str, Any]], flag: str = "--metric") -> str:
    """--metric / --rank-by must be `stage/name` and present in the runs."""
    allowed = available_metrics(runs)
    if metric not in allowed:
        raise ReportError(f"unknown {flag} metric {metric!r}; allowed: {', '.join(allowed)}")
    return metric


def metric_range(metric: str) -> tuple[float, float] | None:
    """(0, 1) for bounded metrics (acc, f1, rouge*, bleu); None for unbounded ones such as losses."""
    name = metric.rsplit("/", 1)[-1]
    return (0.0, 1.0) if name.startswith(BOUNDED_METRICS) else None


def is_test(metric: str) -> bool:
    return metric.split("/", 1)[0] == REPORT_STAGE


# ---------------------------------------------------------------------------------------------------- statistics


def bootstrap_interval(values: Sequence[float]) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean. It lies within [min, max] of the values, so a bounded metric's
    interval never leaves its range (a t interval does, with few folds). NaN below two values."""
    arr = np.asarray(values, dtype=float)
    if arr.size < 2:
        return math.nan, math.nan
    rng = np.random.default_rng(BOOTSTRAP_SEED)  # fresh per call: the same values always give the same interval
    means = arr[rng.integers(0, arr.size, size=(BOOTSTRAP_RESAMPLES, arr.size))].mean(axis=1)
    tail = 50 * (1 - INTERVAL_LEVEL)
    low, high = np.clip(np.percentile(means, [tail, 100 - tail]), arr.min(), arr.max())  # clip: float rounding
    return float(low), float(high)


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
    """One configuration: n, the folds it lacks, mean/std/bootstrap interval of every metric, mean cost."""
    row: dict[str, Any] = {**settings, "n": len(members), "missing": missing_pairs(members, expected)}
    for metric in metrics:
        values = _values(members, metric)
        row[f"{metric}_mean"] = float(np.mean(values)) if values else math.nan
        row[f"{metric}_std"] = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0 if values else math.nan
        row[f"{metric}_ci_low"], row[f"{metric}_ci_high"] = bootstrap_interval(values)
    for key in ("trainable_params", "wall_seconds"):
        values = _values(members, key)
        row[f"{key}_mean"] = float(np.mean(values)) if values else math.nan
    return row


def _sort_key(mean: float, metric: str) -> tuple[bool, float]:
    """Best first (highest, or lowest for a loss), NaN (no value to rank by) last."""
    if math.isnan(mean):
        return (True, 0.0)
    return (False, mean if metric.rsplit("/", 1)[-1] == "loss" else -mean)


def _ranked(runs: Sequence[Mapping[str, Any]], group_by: Sequence[str], metric: str,
            rank_by: str) -> list[tuple[list[Mapping[str, Any]], dict[str, Any]]]:
    """(member runs, summary row) per configuration, best `rank_by` first; the best is tested against each other
    configuration on `metric`. A configuration without `rank_by` is never chosen."""
    groups: dict[tuple[Any, ...], list[Mapping[str, Any]]] = {}
    for run in runs:
        groups.setdefault(tuple(run.get(key) for key in group_by), []).append(run)
    metrics, expected = sorted({*available_metrics(runs), metric, rank_by}), expected_pairs(runs)
    rows = [(members, _summary_row(dict(zip(group_by, key, strict=True)), members, metrics, expected))
            for key, members in groups.items()]
    rows.sort(key=lambda item: _sort_key(item[1][f"{rank_by}_mean"], rank_by))
    best = rows[0][0] if not math.isnan(rows[0][1][f"{rank_by}_mean"]) else None
    for members, row in rows:
        row["is_best"] = members is best
        if best is None or members is best:
            row["p_vs_best"], row["pairs_vs_best"] = math.nan, len(_by_pair(members, metric)) if best else 0
        else:
            row["p_vs_best"], row["pairs_vs_best"] = paired_test(best, members, metric)
        row["ranked_by"], row["p_vs_best_on"] = rank_by, metric  # so results.csv says what chose and what is tested
    return rows


def summarize(runs: Sequence[Mapping[str, Any]], group_by: Sequence[str], metric: str,
              rank_by: str | None = None) -> pd.DataFrame:
    """One row per configuration (runs equal on `group_by`; folds and seeds pooled), ranked by `rank_by` (None:
    the runs' validation selection metric), with a paired t-test on `metric` of the best against each other one."""
    return pd.DataFrame([row for _, row in _ranked(runs, group_by, metric, rank_by or default_rank_by(runs))])


def best_per(runs: Sequence[Mapping[str, Any]], group_by: Sequence[str], metric: str, keys: Sequence[str],
             rank_by: str | None = None) -> pd.DataFrame:
    """For each value of `keys`, the configuration whose other hyper-parameters are best on `rank_by` (None: the
    validation selection metric), with its per-run `metric` values (`<metric>_values`) for plots. A choice that
    needs `rank_by` where no candidate has it is left out rather than made at random."""
    ranked = _ranked(runs, list(dict.fromkeys([*keys, *group_by])), metric, rank_by or default_rank_by(runs))
    candidates: dict[tuple[Any, ...], list[tuple[list[Mapping[str, Any]], dict[str, Any]]]] = {}
    for members, row in ranked:
        candidates.setdefault(tuple(None if _is_missing(row[k]) else row[k] for k in keys), []).append((members, row))
    chosen = [{**row, f"{metric}_values": _values(members, metric)} for group in candidates.values()
              for members, row in group[:1] if len(group) == 1 or not math.isnan(row[f"{row['ranked_by']}_mean"])]
    return pd.DataFrame(chosen)


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


def _interval_cell(row: Mapping[str, Any], metric: str) -> str:
    """`mean [low, high]`; the mean alone for a single run (no interval)."""
    mean, low, high = (row[f"{metric}_{part}"] for part in ("mean", "ci_low", "ci_high"))
    if _is_missing(mean):
        return "-"
    return f"{mean:.4f}" if _is_missing(low) else f"{mean:.4f} [{low:.4f}, {high:.4f}]"


def _p_cell(row: Mapping[str, Any]) -> str:
    """`best`, `n/a` (fewer than 2 pairs or undefined) or the p-value with `*` when significant."""
    if row["is_best"]:
        return "best"
    p_value = row["p_vs_best"]
    if _is_missing(p_value):
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
        cells = [*(_cell(row[key]) for key in group_by), str(row["n"]), *([row["missing"]] if show_missing else []),
                 *(_interval_cell(row, name) for name, _ in shown),
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
    """results.md: what chose and what is reported, how to read the table, the table, then the incomplete jobs."""
    intro = "\n\n".join([
        f"# Sweep results\n\n{len(collection.runs)} runs in {len(summary)} configurations.",
        *ranking_notes(summary, metric),
        f"Intervals: {INTERVAL} and seeds (percentile bootstrap of the mean, {BOOTSTRAP_RESAMPLES:,} resamples); none "
        f"for a single run. `p vs best`: paired t-test on {metric} of the chosen configuration against each other one "
        f"over their shared (fold, seed) pairs; `*` marks p < {SIGNIFICANCE}."])
    table = markdown_table(summary, group_by, metric)
    return f"{intro}\n\n{table}\n\n{incomplete_section(collection.incomplete, missing_lines(summary, group_by))}\n"


# ------------------------------------------------------------------------------------------------ report and CLI


def write_report(collection: Collection, summary: pd.DataFrame, out_dir: Path, group_by: Sequence[str],
                 metric: str) -> Report:
    """results.csv, results.md and the plots the data supports, in out_dir."""
    from softprompt.report_plots import write_plots  # matplotlib only when drawing; report_plots imports this module

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
    parser.add_argument("--metric", help="stage/name reported for the chosen configurations and paired-tested "
                        "(default: test/<selection metric>)")
    parser.add_argument("--rank-by", metavar="STAGE/NAME", help="stage/name that ranks and chooses configurations "
                        "(default: the runs' validation selection metric, e.g. val/acc; a test metric is flagged "
                        "as optimistic)")
    parser.add_argument("--wandb", action="store_true", help="also log the table and plots to wandb")
    return parser


def missing_lines(summary: pd.DataFrame, group_by: Sequence[str]) -> list[str]:
    """`configuration method=..., init=... is missing fold 3` for each configuration short of a fold."""
    return [f"configuration {', '.join(f'{key}={_cell(row[key])}' for key in group_by)} is missing {row['missing']}"
            for row in summary.to_dict("records") if row["missing"]]


def _print_summary(collection: Collection, summary: pd.DataFrame, group_by: Sequence[str], metric: str,
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


def run_report(args: argparse.Namespace) -> Report:
    """The whole report for parsed arguments; raises ReportError on bad input."""
    collection = collect_runs(args.paths)
    if not collection.runs:
        raise ReportError(f"no runs found: no readable {METRICS_FILE} under {', '.join(map(str, args.paths))} "
                          f"({len(collection.incomplete)} incomplete job(s)); pass run or sweep dirs")
    runs = collection.runs
    group_by = parse_group_by(args.group_by, runs) if args.group_by else default_group_by(runs)
    metric = check_metric(args.metric, runs) if args.metric else default_metric(runs)
    rank_by = check_metric(args.rank_by, runs, "--rank-by") if args.rank_by else default_rank_by(runs)
    first = Path(args.paths[0])
    out_dir = args.out or (Path.cwd() if first.is_file() else first)
    summary = summarize(runs, group_by, metric, rank_by)
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
