"""Choosing on validation: the order configurations are ranked in (ties broken by the settings' natural order,
never by path order and never by a test score), and nested selection (`tune=lr`): inside each (fold, seed), the
tuned keys are chosen by that run's validation metric, and that run's test score is what the row reports. The row
then estimates the whole procedure, "this method with its lr tuned on validation", never a value picked by looking
at the folds it is scored on."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from softprompt.analysis.report.collect import METHOD_CONFIG, SETTING_KEYS, ReportError
from softprompt.analysis.report.comparisons import natural, pair_of

TUNED = "tuned"  # a nested-selection run's chosen values of the tuned keys ({key: value})
CHOSEN = "chosen_per_fold"  # the summary column that lists them
PREFIXES = ("optimizer.", "method.", "trainer.")  # Hydra spellings accepted for the settings metrics.json records
Run = Mapping[str, Any]


def lower_is_better(metric: str) -> bool:
    return metric.rsplit("/", 1)[-1] == "loss"


def order(mean: float, metric: str, settings: Sequence[Any]) -> tuple[Any, ...]:
    """Sort key: best `metric` first (lowest for a loss), then the settings in natural order; no value last.
    Means are compared to 12 decimals, so float noise in equal means is a tie, not an order."""
    if mean is None or math.isnan(mean):
        return (True, 0.0, *(natural(value) for value in settings))
    score = round(mean, 12)
    return (False, score if lower_is_better(metric) else -score, *(natural(value) for value in settings))


def resolve_tune(keys: str | Sequence[str], allowed: Sequence[str]) -> list[str]:
    """tune keys (a list or a comma list) as the runs record them: `lr` or `optimizer.lr` -> `lr`,
    `method.init` -> `init`, `method.dropout` -> `method_config.dropout`; a one-line ReportError otherwise."""
    parts = keys.split(",") if isinstance(keys, str) else list(keys)
    resolved = []
    for raw in (part.strip() for part in parts if part.strip()):
        key = raw
        for prefix in (p for p in PREFIXES if raw.startswith(p)):
            rest = raw[len(prefix):]
            if rest in SETTING_KEYS:
                key = rest
            elif prefix == "method." and f"{METHOD_CONFIG}.{rest}" in allowed:
                key = f"{METHOD_CONFIG}.{rest}"
        if key not in allowed or key in ("method", "task"):
            choices = [k for k in allowed if k not in ("method", "task")]
            raise ReportError(f"unknown tune key {raw!r}; allowed: {', '.join(choices)} (optimizer.lr and "
                              "method.NAME spellings are accepted)")
        resolved.append(key)
    if not resolved:
        raise ReportError("tune= is empty; name the keys to tune inside each fold, e.g. tune=lr")
    return list(dict.fromkeys(resolved))


def nested(members: Sequence[Run], tune: Sequence[str], rank_by: str) -> list[dict[str, Any]]:
    """One run per (fold, seed): among the candidates on that pair (every value of the tuned keys), the one best
    on ITS OWN `rank_by` (the fold's validation); ties by the tuned values' natural order. Pairs where no
    candidate has `rank_by` are left out (counted as missing), never chosen by another metric."""
    pairs: dict[tuple[Any, Any], list[Run]] = {}
    for run in members:
        if isinstance(run.get(rank_by), float):
            pairs.setdefault(pair_of(run), []).append(run)
    chosen = []
    for pair in sorted(pairs, key=lambda p: tuple(natural(v) for v in p)):
        best = min(pairs[pair], key=lambda run: order(run[rank_by], rank_by, [run.get(key) for key in tune]))
        chosen.append({**best, TUNED: {key: best.get(key) for key in tune}})
    return chosen


def cell(value: Any) -> str:
    """A setting as a table cell: integers without `.0`, missing as `-`."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() and abs(value) >= 1 else f"{value:g}"
    return str(value)


def chosen_cell(runs: Sequence[Run], tune: Sequence[str]) -> str:
    """`fold 0: 0.3; fold 1: 0.01` (a seed named when the runs have several; `lr=0.3 init=vocab` for several
    keys), in fold order."""
    seeds = {run.get("seed") for run in runs}
    parts = []
    for run in runs:
        fold, seed = pair_of(run)
        where = f"fold {cell(fold)}" + (f" seed {cell(seed)}" if len(seeds) > 1 else "")
        values = run[TUNED]
        what = cell(values[tune[0]]) if len(tune) == 1 else " ".join(f"{k}={cell(values[k])}" for k in tune)
        parts.append(f"{where}: {what}")
    return "; ".join(parts)
