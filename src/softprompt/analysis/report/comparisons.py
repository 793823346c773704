"""Each configuration's interval, and paired comparisons between configurations, from per-example outcomes where the
runs saved them (softprompt.analysis.report.outcomes), else from the runs alone.

A comparison pairs the two configurations on the (fold, seed) runs both have and on the test examples they share:
the crossed variance decomposition (softprompt.analysis.report.intervals) applied to the per-run and per-example
DIFFERENCES, so training randomness and test-set sampling both count, once. A single pair of runs on accuracy gets
the exact McNemar test on its discordant examples. Runs without predictions get a t interval over their paired
differences and an exact sign-flip test, whose smallest p is 2/2^n (0.5 at n = 2): equal fold differences never
look significant. p-values are Holm-corrected over every comparison of a table (`holm`).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats

from softprompt.analysis.report.intervals import (
    RUNS_AND_EXAMPLES,
    Spread,
    from_draws,
    from_matrix,
    resample_weights,
    runs_only,
)
from softprompt.analysis.report.outcomes import Outcomes, Unavailable, run_outcomes

PAIR_KEYS = ("fold", "seed")
CROSSED_TEST = "paired over runs and test examples"
MCNEMAR = "exact McNemar (one run each)"
SIGN_FLIP = "sign-flip over runs (no test predictions)"
EXACT_FLIPS = 16  # up to 2^16 sign patterns enumerated; more runs draw 20,000 of them (seeded)
Run = Mapping[str, Any]


@dataclass(frozen=True)
class Comparison:
    """`difference` = mean(this) - mean(other) over the shared runs, its interval, its (unadjusted) p-value, the
    half-width of the interval (before clipping: the resolution), how many runs paired and how it was tested."""

    difference: float
    low: float
    high: float
    p: float
    half_width: float
    pairs: int
    n_examples: int
    method: str


NO_PAIRS = Comparison(math.nan, math.nan, math.nan, math.nan, math.nan, 0, 0, "no shared (fold, seed) runs")


def pair_of(run: Run) -> tuple[Any, Any]:
    return tuple(run.get(key) for key in PAIR_KEYS)  # type: ignore[return-value]


def natural(value: Any) -> tuple[int, float, str]:
    """Natural order of a setting: numbers numerically (also when written as text), then text, missing last."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return (2, 0.0, "")
    if isinstance(value, int | float):
        return (0, float(value), "")
    try:
        return (0, float(str(value)), "")
    except ValueError:
        return (1, 0.0, str(value))


def _by_pair(runs: Sequence[Run], metric: str) -> dict[tuple[Any, Any], list[Run]]:
    pairs: dict[tuple[Any, Any], list[Run]] = {}
    for run in runs:
        if isinstance(run.get(metric), float):
            pairs.setdefault(pair_of(run), []).append(run)
    return pairs


def _outcomes(groups: Sequence[Sequence[Run]], metric: str) -> list[list[Outcomes]]:
    """Every run's outcomes, on one set of examples; Unavailable when a run has none or the examples differ."""
    found = [[run_outcomes(run, metric) for run in group] for group in groups]
    keys = found[0][0].keys
    if any(outcome.keys != keys for group in found for outcome in group):
        raise Unavailable("the runs' test predictions cover different test examples")
    return found


_DRAWN: dict[int, tuple[Outcomes, np.ndarray]] = {}  # by the (cached) outcomes' identity, kept alive with them


def _draws(outcomes: Outcomes) -> np.ndarray:
    """The run's metric on each bootstrap resample of the examples (the same resamples for every run)."""
    known = _DRAWN.get(id(outcomes))
    if known is not None and known[0] is outcomes:
        return known[1]
    weights = resample_weights(tuple(int(s) for s in outcomes.strata))
    draws = np.asarray(outcomes.aggregate(weights.astype(float) @ outcomes.stats), dtype=float)  # type: ignore[misc]
    if len(_DRAWN) > 4096:
        _DRAWN.clear()
    _DRAWN[id(outcomes)] = (outcomes, draws)
    return draws


def _group_matrix(group: Sequence[Outcomes]) -> np.ndarray:
    return np.mean([outcome.stats[:, 0] for outcome in group], axis=0)


def _group_values(group: Sequence[Outcomes]) -> tuple[float, np.ndarray]:
    return float(np.mean([o.value() for o in group])), np.mean([_draws(o) for o in group], axis=0)


def config_spread(members: Sequence[Run], metric: str) -> tuple[Spread, str]:
    """One configuration's mean of `metric` over its runs with its variance components, and why it is over runs
    only ('' when the examples count too)."""
    runs = [run for run in members if isinstance(run.get(metric), float)]
    if not runs:
        return runs_only([]), "no values"
    try:
        found = _outcomes([[run] for run in runs], metric)
    except Unavailable as why:
        return runs_only([run[metric] for run in runs]), str(why)
    if found[0][0].aggregate is None:
        return from_matrix(np.vstack([group[0].stats[:, 0] for group in found])), ""
    points, draws = zip(*(_group_values(group) for group in found), strict=True)
    return from_draws(np.array(points), np.vstack(draws), len(found[0][0].keys)), ""


def sign_flip_p(differences: Sequence[float]) -> float:
    """Exact two-sided sign-flip (permutation) p of mean difference 0 over paired runs; 1 for a zero mean."""
    d = np.asarray(differences, dtype=float)
    observed = abs(d.mean())
    if observed == 0:
        return 1.0
    if len(d) <= EXACT_FLIPS:
        signs = np.array(list(itertools.product((1.0, -1.0), repeat=len(d))))
    else:
        signs = np.random.default_rng(0).choice((1.0, -1.0), size=(20_000, len(d)))
    return float(np.mean(np.abs(signs @ d) / len(d) >= observed * (1 - 1e-9)))


def mcnemar_p(differences: np.ndarray) -> float:
    """Exact McNemar: a binomial test on the discordant examples (one right, the other wrong)."""
    wins, losses = int(np.sum(differences > 0)), int(np.sum(differences < 0))
    return 1.0 if wins + losses == 0 else float(stats.binomtest(wins, wins + losses, 0.5).pvalue)


def compare(this: Sequence[Run], other: Sequence[Run], metric: str, bounds: tuple[float, float] | None,
            constant: bool = False) -> Comparison:
    """`this` minus `other` on `metric`, paired on their shared (fold, seed) runs and test examples. `constant`:
    `other` trains nothing (zero-shot), so its one run stands for every (fold, seed) of `this` when they share
    none."""
    mine, theirs = _by_pair(this, metric), _by_pair(other, metric)
    if constant and len(theirs) == 1 and not mine.keys() & theirs.keys():
        theirs = dict.fromkeys(mine, next(iter(theirs.values())))
    pairs = sorted(mine.keys() & theirs.keys(), key=lambda pair: tuple(natural(v) for v in pair))
    if not pairs:
        return NO_PAIRS
    span = (bounds[0] - bounds[1], bounds[1] - bounds[0]) if bounds else None
    try:
        found = _outcomes([*(mine[p] for p in pairs), *(theirs[p] for p in pairs)], metric)
    except Unavailable:
        differences = [np.mean([r[metric] for r in mine[p]]) - np.mean([r[metric] for r in theirs[p]])
                       for p in pairs]
        spread = runs_only(differences)
        low, high = spread.interval(span)
        return Comparison(spread.estimate, low, high, sign_flip_p(differences), spread.half_width(), len(pairs), 0,
                          SIGN_FLIP)
    own, others = found[:len(pairs)], found[len(pairs):]
    if own[0][0].aggregate is None:
        differences = np.vstack([_group_matrix(a) - _group_matrix(b) for a, b in zip(own, others, strict=True)])
        spread = from_matrix(differences)
        binary = all(np.isin(o.stats, (0.0, 1.0)).all() for group in found for o in group)
        if len(pairs) == 1 and binary and len(own[0]) == len(others[0]) == 1:
            low, high = spread.interval(span)
            return Comparison(spread.estimate, low, high, mcnemar_p(differences[0]), spread.half_width(), 1,
                              differences.shape[1], MCNEMAR)
    else:
        values = [(_group_values(a), _group_values(b)) for a, b in zip(own, others, strict=True)]
        spread = from_draws(np.array([a[0] - b[0] for a, b in values]), np.vstack([a[1] - b[1] for a, b in values]),
                            len(own[0][0].keys))
    low, high = spread.interval(span)
    return Comparison(spread.estimate, low, high, spread.p_value(), spread.half_width(), len(pairs), spread.n_examples,
                      CROSSED_TEST if spread.kind == RUNS_AND_EXAMPLES else "paired over test examples (one run each)")


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjustment over the non-NaN p-values (NaN stays NaN)."""
    indexed = sorted((p, i) for i, p in enumerate(p_values) if not math.isnan(p))
    adjusted, running = [math.nan] * len(p_values), 0.0
    for rank, (p, index) in enumerate(indexed):
        running = max(running, min(1.0, (len(indexed) - rank) * p))
        adjusted[index] = running
    return adjusted
