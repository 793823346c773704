"""The numbers of a report: which keys group runs into configurations, which metric ranks them (validation) and
which is reported (test), each configuration's interval (softprompt.analysis.report.intervals: runs and test
examples), paired comparisons against the chosen configuration and the zero-shot one, Holm-corrected over the table
(softprompt.analysis.report.comparisons), and nested selection (softprompt.analysis.report.selection).

Runs are first split by task (metrics.json's `task`; a task mixture is one task, under its own name): each task's
configurations are ranked, chosen and tested among themselves, never against another task's."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from softprompt.analysis.report.collect import METHOD_CONFIG, SETTING_KEYS, STAGES, ReportError
from softprompt.analysis.report.comparisons import Comparison, compare, config_spread, holm, pair_of
from softprompt.analysis.report.intervals import LEVEL, RUNS_ONLY
from softprompt.analysis.report.selection import CHOSEN, chosen_cell, nested, order, resolve_tune

RANK_STAGE, REPORT_STAGE = "val", "test"  # choose on validation, report on test
SIGNIFICANCE = 0.05  # on Holm-adjusted p-values
INTERVAL_LEVEL = LEVEL
LOW_N = 3  # rows with fewer runs are flagged: their run variance has n - 1 < 2 degrees of freedom
ZERO_SHOT, BEST = "zero_shot", "best"
BOUNDED_METRICS = ("acc", "f1", "bleu", "rouge")  # names (or prefixes: rougeL, rouge1) of metrics in [0, 1]
TASK = "task"  # the setting that splits a report into one table (ranking, tests, plots) per task


def is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


# ------------------------------------------------------------------------------------------------ keys and metrics


def _distinct(runs: Iterable[Mapping[str, Any]], keys: Sequence[str]) -> int:
    """How many configurations `keys` split the runs into."""
    return len({tuple(run.get(key) for key in keys) for run in runs})


def by_task(runs: Iterable[Mapping[str, Any]]) -> dict[Any, list[Mapping[str, Any]]]:
    """The runs of each task, tasks in name order. A mixture's runs are one task (the mixture's name)."""
    tasks: dict[Any, list[Mapping[str, Any]]] = {}
    for run in runs:
        tasks.setdefault(run.get(TASK), []).append(run)
    return dict(sorted(tasks.items(), key=lambda item: str(item[0])))


def with_task(group_by: Sequence[str], runs: Iterable[Mapping[str, Any]]) -> list[str]:
    """`group_by`, led by `task` when the runs are of several tasks (so no configuration spans two tasks)."""
    return [TASK, *group_by] if TASK not in group_by and len(by_task(runs)) > 1 else list(group_by)


def group_keys(runs: Sequence[Mapping[str, Any]]) -> list[str]:
    """Keys allowed for group_by: the settings plus every method_config scalar (never fold/seed)."""
    extra = sorted({key for run in runs for key in run if key.startswith(f"{METHOD_CONFIG}.")})
    return [*SETTING_KEYS, *extra]


def default_group_by(runs: Sequence[Mapping[str, Any]]) -> list[str]:
    """The settings that vary within a task; method_config keys only when they split configs further (most mirror
    settings). The task itself is never one: each task is a table of its own."""
    tasks = by_task(runs).values()
    keys = [key for key in SETTING_KEYS if any(_distinct(members, [key]) > 1 for members in tasks)]
    for key in group_keys(runs)[len(SETTING_KEYS):]:
        if any(_distinct(members, [*keys, key]) > _distinct(members, keys) for members in tasks):
            keys.append(key)
    return keys or ["method"]


def available_metrics(runs: Iterable[Mapping[str, Any]]) -> list[str]:
    """`stage/name` metrics present in at least one run."""
    return sorted({key for run in runs for key in run if key.split("/", 1)[0] in STAGES and "/" in key})


def _selection_name(runs: Sequence[Mapping[str, Any]], key: str) -> str:
    """`acc` from the runs' selection_metric (`val/acc`); it must be the same for every run."""
    selections = sorted({str(run.get("selection_metric")) for run in runs if run.get("selection_metric")})
    if len(selections) != 1:
        raise ReportError(f"cannot pick a default {key}: runs use selection metrics {selections or 'none'}; "
                          f"pass {key}=STAGE/NAME, one of: {', '.join(available_metrics(runs))}")
    return selections[0].split("/", 1)[-1]


def default_metric(runs: Sequence[Mapping[str, Any]]) -> str:
    """The reported metric: `test/<selection name>` (val/acc -> test/acc)."""
    return f"{REPORT_STAGE}/{_selection_name(runs, 'metric')}"


def default_rank_by(runs: Sequence[Mapping[str, Any]]) -> str:
    """The metric configurations are chosen by: the runs' validation selection metric (`val/acc`)."""
    return f"{RANK_STAGE}/{_selection_name(runs, 'rank_by')}"


def check_group_by(keys: str | Sequence[str], runs: Sequence[Mapping[str, Any]]) -> list[str]:
    """group_by keys (a list, or one comma-separated string), checked against the keys the runs have."""
    parts = keys.split(",") if isinstance(keys, str) else keys
    checked = list(dict.fromkeys(part.strip() for part in parts if part.strip()))
    allowed = group_keys(runs)
    unknown = [key for key in checked if key not in allowed]
    if not checked or unknown:
        named = unknown[0] if unknown else keys if isinstance(keys, str) else ",".join(keys)
        raise ReportError(f"unknown group key {named!r}; allowed: {', '.join(allowed)}")
    return checked


def check_metric(metric: str, runs: Sequence[Mapping[str, Any]], key: str = "metric") -> str:
    """metric / rank_by must be `stage/name` and present in the runs."""
    allowed = available_metrics(runs)
    if metric not in allowed:
        raise ReportError(f"{key}={metric!r} is unknown; allowed: {', '.join(allowed)}")
    return metric


def metric_range(metric: str) -> tuple[float, float] | None:
    """(0, 1) for bounded metrics (acc, f1, rouge*, bleu); None for unbounded ones such as losses."""
    name = metric.rsplit("/", 1)[-1]
    return (0.0, 1.0) if name.startswith(BOUNDED_METRICS) else None


def is_test(metric: str) -> bool:
    return metric.split("/", 1)[0] == REPORT_STAGE


# ---------------------------------------------------------------------------------------------------- statistics


def _values(runs: Iterable[Mapping[str, Any]], key: str) -> list[float]:
    """The numeric values of `key` over runs, skipping runs that lack it."""
    return [float(run[key]) for run in runs if isinstance(run.get(key), int | float)]


def expected_pairs(runs: Sequence[Mapping[str, Any]]) -> set[tuple[Any, Any]]:
    """The (fold, seed) pairs every configuration should have: all folds of the split x every seed seen."""
    seeds = {run.get("seed") for run in runs}
    folds: set[Any] = {run.get("fold") for run in runs}
    for num_folds in {run.get("num_folds") for run in runs if isinstance(run.get("num_folds"), int)}:
        folds |= set(range(num_folds))
    return {(fold, seed) for fold in folds for seed in seeds}


def missing_pairs(members: Sequence[Mapping[str, Any]], expected: set[tuple[Any, Any]]) -> str:
    """`fold 3` / `fold 3 seed 1` for each expected pair a configuration lacks (a killed or failed job)."""
    have = {pair_of(run) for run in members}
    seeds = {seed for _, seed in expected}
    return ", ".join(f"fold {fold}" + (f" seed {seed}" if len(seeds) > 1 else "")
                     for fold, seed in sorted(expected - have, key=repr))


def _summary_row(settings: dict[str, Any], members: Sequence[Mapping[str, Any]], metrics: Sequence[str],
                 expected: set[tuple[Any, Any]]) -> dict[str, Any]:
    """One configuration: n, the folds it lacks, mean/std/interval of every metric (over runs and the examples of
    its stage where the runs saved predictions that reproduce it, else over runs), and what each interval
    covers."""
    row: dict[str, Any] = {**settings, "n": len(members), "missing": missing_pairs(members, expected)}
    for metric in metrics:
        values = _values(members, metric)
        row[f"{metric}_mean"] = float(np.mean(values)) if values else math.nan
        row[f"{metric}_std"] = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0 if values else math.nan
        spread, why = config_spread(members, metric)
        row[f"{metric}_ci_low"], row[f"{metric}_ci_high"] = spread.interval(metric_range(metric))
        row[f"{metric}_interval"] = spread.kind + (f": {why}" if why and spread.kind == RUNS_ONLY else "")
        row[f"{metric}_n_examples"] = spread.n_examples
    for key in ("trainable_params", "wall_seconds", "steps"):
        values = _values(members, key)
        row[f"{key}_mean"] = float(np.mean(values)) if values else math.nan
    return row


def _put(row: dict[str, Any], against: str, comparison: Comparison | None) -> None:
    """The comparison's columns: diff_vs_<against> (this minus it), its interval, raw p, pairs, the test used."""
    fields = ("difference", "low", "high", "p", "half_width", "pairs", "method")
    names = (f"diff_vs_{against}", f"diff_vs_{against}_low", f"diff_vs_{against}_high", f"p_vs_{against}_raw",
             f"half_width_vs_{against}", f"pairs_vs_{against}", f"test_vs_{against}")
    for name, field in zip(names, fields, strict=True):
        row[name] = getattr(comparison, field) if comparison else "" if field == "method" else math.nan


def _is_zero_shot(members: Sequence[Mapping[str, Any]]) -> bool:
    """Nothing trained (metrics.json's trainable_params is 0: the hard-prompt baseline)."""
    return bool(members) and all(run.get("trainable_params") == 0 for run in members)


def _ranked(runs: Sequence[Mapping[str, Any]], group_by: Sequence[str], metric: str, rank_by: str,
            tune: Sequence[str] = ()) -> list[tuple[list[Mapping[str, Any]], dict[str, Any]]]:
    """(member runs, summary row) per configuration, best `rank_by` first (ties: the settings' natural order); each
    other configuration is compared on `metric` with the best and with the zero-shot one (when there is one),
    Holm-corrected over all those comparisons. With `tune`, a configuration's runs are the ones nested selection
    chose, one per (fold, seed). A configuration without `rank_by` is never chosen."""
    keys = [key for key in group_by if key not in tune]
    groups: dict[tuple[Any, ...], list[Mapping[str, Any]]] = {}
    for run in runs:
        groups.setdefault(tuple(run.get(key) for key in keys), []).append(run)
    if tune:
        groups = {key: nested(members, tune, rank_by) for key, members in groups.items()}
    metrics, expected = sorted({*available_metrics(runs), metric, rank_by}), expected_pairs(runs)
    rows = [(members, _summary_row(dict(zip(keys, key, strict=True)), members, metrics, expected))
            for key, members in groups.items()]
    for members, row in rows if tune else ():
        row["tuned"], row[CHOSEN] = ",".join(tune), chosen_cell(members, tune)
    rows.sort(key=lambda item: order(item[1][f"{rank_by}_mean"], rank_by, [item[1][key] for key in keys]))
    best = rows[0][0] if rows and not math.isnan(rows[0][1][f"{rank_by}_mean"]) else None
    zero = next((members for members, _ in rows if _is_zero_shot(members)), None)
    zero = None if zero is best else zero  # zero-shot chosen: its comparisons are the ones against the best
    bounds = metric_range(metric)
    for members, row in rows:
        row["is_best"] = members is best
        _put(row, BEST, compare(members, best, metric, bounds) if best is not None and members is not best else None)
        if members is best:
            row[f"pairs_vs_{BEST}"] = len({pair_of(run) for run in members if isinstance(run.get(metric), float)})
        _put(row, ZERO_SHOT, compare(members, zero, metric, bounds, constant=True)
             if zero is not None and members is not zero else None)
        row["ranked_by"], row["p_vs_best_on"] = rank_by, metric  # so results.csv says what chose and what is tested
    raw = [row[f"p_vs_{against}_raw"] for _, row in rows for against in (BEST, ZERO_SHOT)]
    adjusted = iter(holm(raw))
    for _, row in rows:
        for against in (BEST, ZERO_SHOT):
            row[f"p_vs_{against}"] = next(adjusted)
        row["correction"] = f"Holm over {sum(not math.isnan(p) for p in raw)} comparisons"
    return rows


def summarize(runs: Sequence[Mapping[str, Any]], group_by: Sequence[str], metric: str | None = None,
              rank_by: str | None = None, tune: str | Sequence[str] | None = None) -> pd.DataFrame:
    """One row per configuration (runs equal on `group_by`; folds and seeds pooled), ranked by `rank_by` (None:
    the task's validation selection metric), each compared on `metric` (None: the task's test/<selection metric>)
    with the best and the zero-shot configuration. `tune`: keys chosen inside each (fold, seed) on its validation
    (nested selection; they leave the grouping). Each task is ranked on its own, tasks in name order; with several
    tasks a `task` column leads."""
    tasks, rows = by_task(runs), []
    tuned = resolve_tune(tune, group_keys(runs)) if tune else []
    for task, members in tasks.items():
        ranked = _ranked(members, group_by, metric or default_metric(members), rank_by or default_rank_by(members),
                         tuned)
        rows += [{TASK: task, **row} if len(tasks) > 1 and TASK not in group_by else row for _, row in ranked]
    return pd.DataFrame(rows)


def best_per(runs: Sequence[Mapping[str, Any]], group_by: Sequence[str], metric: str, keys: Sequence[str],
             rank_by: str | None = None, tune: Sequence[str] = ()) -> pd.DataFrame:
    """For each task and value of `keys`, the configuration whose other hyper-parameters are best on `rank_by` (None:
    the task's validation selection metric), with its per-run `metric` values (`<metric>_values`) for plots. A
    choice that needs `rank_by` where no candidate has it is left out rather than made at random. `tune` keys (not
    among `keys`) are chosen inside each fold, as in the table."""
    tasks = by_task(runs)
    tune = [key for key in tune if key not in keys]
    candidates: dict[tuple[Any, ...], list[tuple[list[Mapping[str, Any]], dict[str, Any]]]] = {}
    for task, task_runs in tasks.items():  # a choice is made within one task
        for members, row in _ranked(task_runs, list(dict.fromkeys([*keys, *group_by])), metric,
                                    rank_by or default_rank_by(task_runs), tune):
            row = {TASK: task, **row} if len(tasks) > 1 and TASK not in row else row
            key = (task, *(None if is_missing(row[k]) else row[k] for k in keys))
            candidates.setdefault(key, []).append((members, row))
    chosen = [{**row, f"{metric}_values": _values(members, metric)} for group in candidates.values()
              for members, row in group[:1] if len(group) == 1 or not math.isnan(row[f"{row['ranked_by']}_mean"])]
    return pd.DataFrame(chosen)
