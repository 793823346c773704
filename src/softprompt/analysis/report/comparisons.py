"""Each configuration's interval, and paired comparisons between configurations, from per-example outcomes where the
runs saved them (softprompt.analysis.report.outcomes), else from the runs alone.

A comparison pairs the two configurations on the (fold, seed) runs both have and on the test examples they share:
the crossed variance decomposition (softprompt.analysis.report.intervals) applied to the per-run and per-example
DIFFERENCES, so training randomness and test-set sampling both count, once. Validation examples differ by fold under
k-fold: a configuration's interval, or a comparison's (a pair shares its fold's examples), is then nested
(`intervals.nested`): examples within runs. A single pair of runs on accuracy gets
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
    NESTED,
    RUNS_AND_EXAMPLES,
    Spread,
    from_draws,
    from_matrix,
    from_sets,
    runs_only,
)
from softprompt.analysis.report.outcomes import Outcomes, Unavailable, run_outcomes, stage_word

PAIR_KEYS = ("fold", "seed")
MCNEMAR = "exact McNemar (one run each)"
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


@dataclass(frozen=True)
class _Unit:
    """What one mean is taken over: a run (or the runs of one (fold, seed) pair, averaged; or a paired difference)
    on one set of examples (`keys`), as per-example outcomes (`vector`; mean metrics) or as its value and its values
    on the bootstrap resamples of its examples (`draws`; corpus-level metrics)."""

    keys: tuple[tuple[str, int], ...]
    value: float
    vector: np.ndarray | None = None
    draws: np.ndarray | None = None

    def minus(self, other: _Unit) -> _Unit:
        if other.keys != self.keys:
            raise Unavailable("the paired runs' predictions cover different examples")
        if self.vector is not None and other.vector is not None:
            return _Unit(self.keys, self.value - other.value, vector=self.vector - other.vector)
        return _Unit(self.keys, self.value - other.value, draws=self.draws - other.draws)  # type: ignore[operator]


def _unit(group: Sequence[Outcomes]) -> _Unit:
    """The runs of `group` (which must share their examples) averaged into one unit."""
    keys = group[0].keys
    if any(outcome.keys != keys for outcome in group):
        raise Unavailable("the runs of one (fold, seed) cover different examples")
    value = float(np.mean([outcome.value() for outcome in group]))
    if group[0].aggregate is None:
        return _Unit(keys, value, vector=np.mean([outcome.stats[:, 0] for outcome in group], axis=0))
    return _Unit(keys, value, draws=np.mean([outcome.draws() for outcome in group], axis=0))


def _spread(units: Sequence[_Unit]) -> Spread:
    """The mean over `units` with its variance components. On one set of examples (test; validation without folds)
    the runs and examples are crossed (`from_matrix`, `from_draws`); on disjoint sets (k-fold validation: each fold
    its own held-out examples) the examples are nested in the units (`from_sets`). Sets that overlap without being
    the same are neither: Unavailable."""
    sets: dict[tuple[tuple[str, int], ...], int] = {}
    clusters = [sets.setdefault(unit.keys, len(sets)) for unit in units]
    if len(sets) == 1:
        if units[0].vector is not None:
            return from_matrix(np.vstack([unit.vector for unit in units]))
        return from_draws(np.array([unit.value for unit in units]), np.vstack([unit.draws for unit in units]),
                          len(units[0].keys))
    if len(set().union(*sets)) < sum(map(len, sets)):
        raise Unavailable("the runs' predictions cover overlapping but different examples")
    within = []
    for index, keys in enumerate(sets):
        members = [unit for unit, cluster in zip(units, clusters, strict=True) if cluster == index]
        if members[0].vector is not None:  # the set's unit-averaged outcome: its variance over examples, over M
            within.append(float(np.mean([u.vector for u in members], axis=0).var(ddof=1)) / len(keys))
        else:
            within.append(float(np.mean([u.draws for u in members], axis=0).var(ddof=1)))
    return from_sets(np.array([unit.value for unit in units]), clusters, np.array(within), sum(map(len, sets)))


def config_spread(members: Sequence[Run], metric: str) -> tuple[Spread, str]:
    """One configuration's mean of `metric` over its runs with its variance components, and why it is over runs
    only ('' when the examples count too)."""
    runs = [run for run in members if isinstance(run.get(metric), float)]
    if not runs:
        return runs_only([]), "no values"
    try:
        return _spread([_unit([run_outcomes(run, metric)]) for run in runs]), ""
    except Unavailable as why:
        return runs_only([run[metric] for run in runs]), str(why)


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
    word = stage_word(metric)
    try:
        found = [([run_outcomes(run, metric) for run in mine[p]], [run_outcomes(run, metric) for run in theirs[p]])
                 for p in pairs]
        differences = [_unit(a).minus(_unit(b)) for a, b in found]
        spread = _spread(differences)
    except Unavailable:
        paired = [np.mean([r[metric] for r in mine[p]]) - np.mean([r[metric] for r in theirs[p]]) for p in pairs]
        spread = runs_only(paired)
        low, high = spread.interval(span)
        return Comparison(spread.estimate, low, high, sign_flip_p(paired), spread.half_width(), len(pairs), 0,
                          f"sign-flip over runs (no {word} predictions)")
    low, high = spread.interval(span)
    single = len(pairs) == 1 and len(found[0][0]) == len(found[0][1]) == 1
    if single and differences[0].vector is not None and \
            all(np.isin(o.stats, (0.0, 1.0)).all() for group in found[0] for o in group):
        return Comparison(spread.estimate, low, high, mcnemar_p(differences[0].vector), spread.half_width(), 1,
                          spread.n_examples, MCNEMAR)
    method = {RUNS_AND_EXAMPLES: f"paired over runs and {word} examples",
              NESTED: f"paired over runs and {word} examples (nested: each fold its own)"}.get(
                  spread.kind, f"paired over {word} examples (one run each)")
    return Comparison(spread.estimate, low, high, spread.p_value(), spread.half_width(), len(pairs), spread.n_examples,
                      method)


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjustment over the non-NaN p-values (NaN stays NaN)."""
    indexed = sorted((p, i) for i, p in enumerate(p_values) if not math.isnan(p))
    adjusted, running = [math.nan] * len(p_values), 0.0
    for rank, (p, index) in enumerate(indexed):
        running = max(running, min(1.0, (len(indexed) - rank) * p))
        adjusted[index] = running
    return adjusted
