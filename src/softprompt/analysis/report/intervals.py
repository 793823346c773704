"""Intervals of a mean over runs that cover both sources of its error: training randomness (runs: folds x seeds)
and test-set sampling (examples, which every run and configuration shares).

Crossed random effects. A run r's outcome on example i is y_ri = mu + a_r + b_i + e_ri (run effect, example
difficulty, interaction and noise); the report's estimate is the mean over runs and examples, whose variance is
sigma_a^2/n + sigma_b^2/N + sigma_e^2/(nN). Estimated by

- the run component s_runs^2/n: the variance of the per-run metric values over n (its expectation is
  sigma_a^2/n + sigma_e^2/(nN): each run's score carries its own test noise), n-1 degrees of freedom;
- the example component s_b^2/N: the variance over examples of the outcome averaged over runs, minus the
  interaction that the run component already holds (MS_e/(nN), or less where the runs' spread falls below their
  own test noise, so that equal fold differences never shrink an interval below test sampling), N-1 df;

and combined as Banerjee's (1961) interval, half-width^2 = t(n-1)^2 s_runs^2/n + t(N-1)^2 s_b^2/N: each
component with its own t quantile, so two runs get t with 1 df on the run spread (wide, conservative) while
identical runs (a zero-shot prompt) get the test-sampling interval only. The truth it covers is the population
metric over the distribution of training runs (given the task's training pool) and of test examples. With one run
it covers that run's own population metric (test sampling only). tests/analysis/test_interval_coverage.py pins
the coverage by simulation.

Corpus-level metrics (macro-F1, BLEU, a mixture's macro) get the example component from a seeded bootstrap over
examples: the same resampled example indices for every run and configuration, the metric recomputed on each.

Nested examples (validation under k-fold: each fold validates on its own held-out part) are handled by `nested`,
whose docstring says why the run spread alone then holds the example sampling.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy import optimize, stats

LEVEL = 0.95
BOOTSTRAP_RESAMPLES = 1000
BOOTSTRAP_SEED = 0  # fixed, so the same predictions always give the same interval
RUNS_AND_EXAMPLES, EXAMPLES_ONLY, RUNS_ONLY = "runs+examples", "examples only", "runs only"
NESTED = "runs+examples nested"  # each fold (run) scored on its own examples
SMALLEST_P = 1e-12  # p-values are reported no smaller than this


def quantile(df: np.ndarray | float, level: float = LEVEL) -> np.ndarray:
    """The two-sided t quantile; 0 where there is no component (df <= 0)."""
    df = np.asarray(df, dtype=float)
    return np.where(df > 0, stats.t.ppf(0.5 + level / 2, np.maximum(df, 1)), 0.0)


def half_width(runs: np.ndarray | float, examples: np.ndarray | float, n: np.ndarray | int,
               n_examples: np.ndarray | int, floor: np.ndarray | float = 0.0, level: float = LEVEL) -> np.ndarray:
    """Banerjee's half-width sqrt(t(n-1)^2 runs + t(N-1)^2 examples), never below t(N-1) sqrt(floor), the
    test-sampling half-width of the mean."""
    t_runs, t_examples = quantile(np.asarray(n) - 1, level), quantile(np.asarray(n_examples) - 1, level)
    combined = np.sqrt(t_runs ** 2 * np.asarray(runs) + t_examples ** 2 * np.asarray(examples))
    return np.maximum(combined, t_examples * np.sqrt(np.asarray(floor)))


@dataclass(frozen=True)
class Spread:
    """A mean over runs with its variance components: `runs` (s_runs^2/n, n-1 df; 0 for one run), `examples`
    (the test-example component, N-1 df; 0 when only the runs are known), `floor` (test sampling alone), and what
    they cover (`kind`). For NESTED spreads `n` counts the independent units (folds), which set the run df."""

    estimate: float
    runs: float
    examples: float
    n: int
    n_examples: int
    kind: str
    floor: float = 0.0

    def half_width(self, level: float = LEVEL) -> float:
        """NaN where nothing is estimated: one run and no predictions, or runs only with no spread among them."""
        if self.kind == RUNS_ONLY and (self.n < 2 or self.runs <= 0):
            return math.nan
        return float(half_width(self.runs, self.examples, self.n, self.n_examples, self.floor, level))

    def interval(self, bounds: tuple[float, float] | None = None, level: float = LEVEL) -> tuple[float, float]:
        """estimate -+ half-width, clipped to the metric's range (the truth lies in it)."""
        width = self.half_width(level)
        if math.isnan(width):
            return math.nan, math.nan
        low, high = self.estimate - width, self.estimate + width
        return (max(low, bounds[0]), min(high, bounds[1])) if bounds else (low, high)

    def p_value(self) -> float:
        """Two-sided p of `estimate == 0`: the largest level whose interval still holds 0 (so p < 0.05 exactly
        when the 95% interval excludes 0). 1 for a zero estimate (identical predictions); NaN when there is no
        variance to test against."""
        if self.estimate == 0:
            return 1.0
        if (self.runs <= 0 and self.examples <= 0 and self.floor <= 0) or self.kind == RUNS_ONLY:
            return math.nan
        target = abs(self.estimate)

        def excess(log_alpha: float) -> float:
            width = half_width(self.runs, self.examples, self.n, self.n_examples, self.floor, 1 - math.exp(log_alpha))
            return float(width) - target

        low = math.log(SMALLEST_P)
        if excess(low) <= 0:
            return SMALLEST_P
        return math.exp(optimize.brentq(excess, low, 0.0, xtol=1e-10))


# ------------------------------------------------------------------------------------------------ the components


def crossed(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(estimate, run component, example component, floor) of outcome matrices (..., n runs, N examples),
    vectorised over leading axes. The floor is the variance over examples of the run-averaged outcome over N: what
    test sampling alone gives the mean, the runs' own test noise included (a variance the interval never goes
    below). One run: the example component and the floor are that run's own test-sampling variance."""
    matrix = np.asarray(matrix, dtype=float)
    n, size = matrix.shape[-2:]
    per_run = matrix.mean(axis=-1)
    estimate = per_run.mean(axis=-1)
    per_example = matrix.mean(axis=-2)
    if n == 1:
        single = per_example.var(axis=-1, ddof=1) / size
        return estimate, np.zeros_like(estimate), single, single
    residual = matrix - per_run[..., :, None] - per_example[..., None, :] + estimate[..., None, None]
    noise = (residual ** 2).sum(axis=(-2, -1)) / ((n - 1) * (size - 1)) / size  # MS_e/N: test noise per run score
    pooled = per_example.var(axis=-1, ddof=1) / size
    return estimate, per_run.var(axis=-1, ddof=1) / n, np.maximum(pooled - noise / n, 0.0), pooled


def crossed_draws(points: np.ndarray, draws: np.ndarray) -> tuple[float, float, float, float]:
    """The same components for a corpus-level metric: `points` (n,) the runs' values, `draws` (n, B) each run's
    value on B bootstrap resamples of the examples (the same resamples for every run)."""
    n = len(points)
    estimate = float(np.mean(points))
    if n == 1:
        single = float(draws[0].var(ddof=1))
        return estimate, 0.0, single, single
    mean_draw = draws.mean(axis=0)
    noise = float((draws - mean_draw).var(axis=1, ddof=1).mean()) * n / (n - 1)  # sigma_e^2/N
    pooled = float(mean_draw.var(ddof=1))
    return estimate, float(np.var(points, ddof=1)) / n, max(pooled - noise / n, 0.0), pooled


def nested(values: np.ndarray, clusters: Sequence[int], within: np.ndarray
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(estimate, run component, floor) of a mean over units whose examples are nested in them, vectorised over
    leading axes. `values` (..., n): each unit's metric; `clusters` (n,): which example set each unit was scored on
    (0..F-1; units of one set share its examples); `within` (..., F): each set's example-sampling variance of its
    units' mean metric (the variance over its examples of the unit-averaged outcome over its size, or over
    bootstrap resamples).

    Why the run spread alone: under k-fold, fold f's run is scored on its own held-out examples, x_f = mu + a_f +
    e_f, where e_f (variance sigma_w^2/M given the run) is the sampling error of f's examples and is independent
    across folds, because their examples are disjoint. So Var(mean of n folds) = (sigma_a^2 + sigma_w^2/M)/n, whose
    unbiased estimate is s_x^2/n, the variance of the per-fold scores over n: each fold's score already carries its
    own example noise, and it averages out over folds. Adding an example component (as for test, where every run
    shares the examples, so their sampling error does not average out over runs) would count it twice. The interval
    is then a t(F-1) interval on the run spread, never narrower than example sampling alone (the floor: the
    within-set variance is a lower bound of the whole, and folds that happen to agree must not hide it). Units of
    one set (seeds of one fold) share its examples, so they are not independent: the set is the unit, its mean
    weighted by its share of units (the estimate stays the mean over units) with the cluster-robust variance
    F/(F-1) sum_f w_f^2 (X_f - mean)^2, F-1 df, which is s_x^2/n with one unit per set. (One set is the crossed case:
    `crossed`.) Folds partition one pool and train on each other's examples, so their scores are not quite
    independent (Nadeau and Bengio 2003): like the test interval, it covers runs given the task's training pool."""
    values, labels = np.asarray(values, dtype=float), np.asarray(clusters)
    n, sets = values.shape[-1], int(labels.max()) + 1
    members = np.eye(sets)[labels]  # (n, F)
    weights = members.sum(axis=0) / n
    estimate = values.mean(axis=-1)
    floor = (np.asarray(within, dtype=float) * weights ** 2).sum(axis=-1)
    means = values @ members / members.sum(axis=0)
    runs = sets / (sets - 1) * (weights ** 2 * (means - estimate[..., None]) ** 2).sum(axis=-1)
    return estimate, runs, floor


def runs_only(values: Sequence[float]) -> Spread:
    """A t interval over runs, for metrics without per-example outcomes (runs without predictions)."""
    arr = np.asarray(values, dtype=float)
    runs = float(arr.var(ddof=1)) / len(arr) if len(arr) > 1 else 0.0
    return Spread(float(arr.mean()) if len(arr) else math.nan, runs, 0.0, len(arr), 0, RUNS_ONLY)


def from_matrix(matrix: np.ndarray) -> Spread:
    estimate, runs, examples, floor = crossed(matrix)
    n, size = matrix.shape
    return Spread(float(estimate), float(runs), float(examples), n, size,
                  EXAMPLES_ONLY if n == 1 else RUNS_AND_EXAMPLES, float(floor))


def from_draws(points: np.ndarray, draws: np.ndarray, n_examples: int) -> Spread:
    estimate, runs, examples, floor = crossed_draws(points, draws)
    n = len(points)
    return Spread(estimate, runs, examples, n, n_examples, EXAMPLES_ONLY if n == 1 else RUNS_AND_EXAMPLES, floor)


def from_sets(values: np.ndarray, clusters: Sequence[int], within: np.ndarray, n_examples: int) -> Spread:
    """Units on two or more disjoint example sets (k-fold validation): `nested`'s components; `n_examples` counts
    the examples of every set."""
    estimate, runs, floor = nested(values, clusters, within)
    return Spread(float(estimate), float(runs), 0.0, len(set(clusters)), n_examples, NESTED, float(floor))


@lru_cache(maxsize=16)
def resample_weights(strata: tuple[int, ...]) -> np.ndarray:
    """(B, N) bootstrap counts: each resample draws every stratum (a mixture's task) to its own size, seeded, so
    every run and configuration on these examples is resampled identically."""
    rng = np.random.default_rng(BOOTSTRAP_SEED)
    labels = np.asarray(strata)
    weights = np.zeros((BOOTSTRAP_RESAMPLES, len(labels)), dtype=np.float32)
    for stratum in np.unique(labels):
        columns = np.flatnonzero(labels == stratum)
        weights[:, columns] = rng.multinomial(len(columns), np.full(len(columns), 1 / len(columns)),
                                              size=BOOTSTRAP_RESAMPLES)
    return weights
