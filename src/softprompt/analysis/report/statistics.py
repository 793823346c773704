"""The numbers of a report: which keys group runs into configurations, which metric ranks them (validation) and
which is reported (test), bootstrap intervals of the mean, paired t-tests against the chosen configuration."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from softprompt.analysis.report.collect import METHOD_CONFIG, SETTING_KEYS, STAGES, ReportError

RANK_STAGE, REPORT_STAGE = "val", "test"  # choose on validation, report on test
SIGNIFICANCE = 0.05
INTERVAL_LEVEL = 0.95
BOOTSTRAP_RESAMPLES = 10_000
BOOTSTRAP_SEED = 0  # fixed, so the same runs always give the same interval
INTERVAL = "95% bootstrap interval over folds"
BOUNDED_METRICS = ("acc", "f1", "bleu", "rouge")  # names (or prefixes: rougeL, rouge1) of metrics in [0, 1]


def is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


# ------------------------------------------------------------------------------------------------ keys and metrics


def _distinct(runs: Iterable[Mapping[str, Any]], keys: Sequence[str]) -> int:
    """How many configurations `keys` split the runs into."""
    return len({tuple(run.get(key) for key in keys) for run in runs})


def group_keys(runs: Sequence[Mapping[str, Any]]) -> list[str]:
    """Keys allowed for group_by: the settings plus every method_config scalar (never fold/seed)."""
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
        candidates.setdefault(tuple(None if is_missing(row[k]) else row[k] for k in keys), []).append((members, row))
    chosen = [{**row, f"{metric}_values": _values(members, metric)} for group in candidates.values()
              for members, row in group[:1] if len(group) == 1 or not math.isnan(row[f"{row['ranked_by']}_mean"])]
    return pd.DataFrame(chosen)
