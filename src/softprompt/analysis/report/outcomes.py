"""Per-example outcomes: a run's test (validation) metric rebuilt from its `test_predictions.jsonl`
(`val_predictions.jsonl`: the validation pass metrics.json reports), one row of statistics per example, so intervals
and paired tests can account for the sampling of the examples.

A metric is `stats` (one row per example) and an aggregate of their column sums: accuracy, loss and ROUGE are
means of a per-example value (`aggregate` None); macro-F1 (per-class tp/fp/fn), BLEU (n-gram matches, totals,
lengths; against all of a source's references where its rows list `references`) and a mixture's macro mean are
corpus-level, recomputed from resampled sums. A rebuilt metric must
reproduce the run's metrics.json, else it is not used (the report falls back to runs only and says why).
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from softprompt.analysis.report.intervals import resample_weights
from softprompt.objectives.bleu import bleu_from_sums, bleu_statistics
from softprompt.training.results import PREDICTIONS_FILE, VAL_PREDICTIONS_FILE

Aggregate = Callable[[np.ndarray], np.ndarray]  # column sums (..., k) -> metric value(s) (...)
MACRO = "macro"
TOLERANCE = 5e-4  # rebuilt vs metrics.json (float32 sums in torchmetrics)
ROUGE_KEYS = {"rouge1": 1, "rouge2": 2, "rougeL": "L"}
FILES = {"test": PREDICTIONS_FILE, "val": VAL_PREDICTIONS_FILE}  # each stage's per-example predictions
STAGE_WORDS = {"test": "test", "val": "validation"}


def stage_word(metric: str) -> str:
    """`test` for test/..., `validation` for val/...: how tables name a metric's examples."""
    stage = metric.split("/", 1)[0]
    return STAGE_WORDS.get(stage, stage)


class Unavailable(Exception):
    """Why a run's metric cannot be rebuilt per example (no predictions, another kind of metric, a mismatch)."""


@dataclass(frozen=True)
class Outcomes:
    """One run's metric per test example. `keys`: the examples' identities ((task, row_index), in file order);
    `stats`: (N, k); `strata`: the examples' task (resampling keeps each task's size); `aggregate`: None when the
    metric is the mean of stats[:, 0], else the function of the column sums."""

    keys: tuple[tuple[str, int], ...]
    stats: np.ndarray
    strata: np.ndarray
    aggregate: Aggregate | None
    _draws: list[np.ndarray] = field(default_factory=list, init=False, repr=False, compare=False)

    def value(self) -> float:
        if self.aggregate is None:
            return float(self.stats[:, 0].mean())
        return float(self.aggregate(self.stats.sum(axis=0)))

    def draws(self) -> np.ndarray:
        """The metric on each bootstrap resample of the examples (the same resamples for every run on these
        examples), computed once."""
        if not self._draws:
            weights = resample_weights(tuple(int(s) for s in self.strata)).astype(float)
            sums = weights @ self.stats
            value = sums[:, 0] / len(self.keys) if self.aggregate is None else self.aggregate(sums)
            self._draws.append(np.asarray(value, dtype=float))
        return self._draws[0]


@dataclass
class _RunFile:
    """What the report has made of one predictions file while it is unchanged: its rows (or why they are
    unreadable) and each metric built from them."""

    stamp: tuple[int, int]
    rows: tuple[dict[str, Any], ...] | Unavailable
    built: dict[tuple[Any, ...], Outcomes | Unavailable] = field(default_factory=dict)


# One memo, by predictions file: a report reads each run for several metrics and asks for each several times.
_FILES: dict[str, _RunFile] = {}
_MAX_FILES = 4096


def _run_file(path: Path) -> _RunFile:
    try:
        stat = path.stat()
    except FileNotFoundError:
        return _RunFile((-1, -1), Unavailable(f"no {path.name}"))
    stamp = (stat.st_mtime_ns, stat.st_size)
    known = _FILES.get(str(path))
    if known is not None and known.stamp == stamp:
        return known
    try:
        rows: tuple[dict[str, Any], ...] | Unavailable = tuple(
            json.loads(line) for line in path.read_text().splitlines() if line.strip())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        rows = Unavailable(f"unreadable {path.name}: {error}")
    if len(_FILES) >= _MAX_FILES:
        _FILES.clear()
    _FILES[str(path)] = found = _RunFile(stamp, rows)
    return found


def prediction_rows(run: Mapping[str, Any], stage: str = "test") -> tuple[dict[str, Any], ...]:
    """The run's test (or `stage`) predictions; Unavailable when it has none (an older run, or a synthetic one)."""
    rows = _run_file(Path(str(run.get("path", ""))) / FILES[stage]).rows
    if isinstance(rows, Unavailable):
        raise Unavailable(str(rows))
    return rows


def majority_share(runs: Sequence[Mapping[str, Any]]) -> float | None:
    """The most frequent test label's share (what always predicting it scores), from the first run with
    classification predictions; None when no run has labels."""
    for run in runs:
        try:
            labels = [row["label"] for row in prediction_rows(run) if "label" in row]
        except Unavailable:
            continue
        if labels:
            return max(np.unique(labels, return_counts=True)[1]) / len(labels)
    return None


# ------------------------------------------------------------------------------------------- one metric, one task


def _macro_f1(classes: int) -> Aggregate:
    """torchmetrics' MulticlassF1Score(average="macro"): classes with no tp, fp or fn are left out."""
    def aggregate(sums: np.ndarray) -> np.ndarray:
        tp, fp, fn = sums[..., :classes], sums[..., classes:2 * classes], sums[..., 2 * classes:]
        denominator = 2 * tp + fp + fn
        f1 = np.divide(2 * tp, denominator, out=np.zeros_like(tp, dtype=float), where=denominator > 0)
        present = denominator > 0
        return np.divide((f1 * present).sum(-1), present.sum(-1), out=np.zeros(f1.shape[:-1]),
                         where=present.sum(-1) > 0)

    return aggregate


def _classification(rows: Sequence[Mapping[str, Any]], name: str) -> tuple[np.ndarray, Aggregate | None]:
    labels = np.array([row["label"] for row in rows])
    predicted = np.array([row["prediction"] for row in rows])
    if name == "acc":
        return (predicted == labels).astype(float)[:, None], None
    if name == "loss":  # the verbalizer cross-entropy; a task.loss=lm run does not reproduce it and is refused
        probabilities = [row["probabilities"][row["label"]] for row in rows]
        return -np.log(np.maximum(np.array(probabilities, dtype=float), 1e-45))[:, None], None
    if name == "f1":
        classes = len(rows[0]["probabilities"])
        one_hot = np.eye(classes)
        truth, guess = one_hot[labels], one_hot[predicted]
        return np.hstack([truth * guess, guess * (1 - truth), truth * (1 - guess)]), _macro_f1(classes)
    raise Unavailable(f"{name} is not rebuilt from classification predictions")


def _references(row: Mapping[str, Any]) -> list[str]:
    """A row's references: all of its source's (task.references=grouped), or its one reference."""
    return [str(r) for r in row["references"]] if "references" in row else [str(row["reference"])]


def _generation(rows: Sequence[Mapping[str, Any]], name: str) -> tuple[np.ndarray, Aggregate | None]:
    predictions, references = [str(row["prediction"]) for row in rows], [_references(row) for row in rows]
    if name in ROUGE_KEYS:  # the best reference's F-measure, as the run's ROUGEScore(accumulate="best")
        from torchmetrics.functional.text.rouge import _rouge_score_update

        key = ROUGE_KEYS[name]
        scores = _rouge_score_update(predictions, references, rouge_keys_values=[key], accumulate="best")[key]
        return np.array([float(score["fmeasure"]) for score in scores])[:, None], None
    if name == "bleu":  # the statistics training's BLEU sums (objectives/bleu.py)
        return np.array([bleu_statistics(p, refs) for p, refs in zip(predictions, references, strict=True)]), \
            bleu_from_sums
    raise Unavailable(f"{name} is not rebuilt from generation predictions")


def _single(rows: Sequence[Mapping[str, Any]], name: str) -> tuple[np.ndarray, Aggregate | None]:
    if not rows:
        raise Unavailable("no predictions for this task")
    if "label" in rows[0] and "probabilities" in rows[0]:
        return _classification(rows, name)
    if "reference" in rows[0] or "references" in rows[0]:
        return _generation(rows, name)
    raise Unavailable("predictions are neither classification nor generation rows")


# -------------------------------------------------------------------------------------------- a mixture's macro


def _block(parts: Sequence[tuple[np.ndarray, Aggregate | None]]) -> tuple[np.ndarray, Aggregate]:
    """Each task's statistics in its own columns (zeros in other tasks' rows); the aggregate is the mean of the
    tasks' own metrics, each from its columns (a mean metric over its task's examples)."""
    widths = [stats.shape[1] + (aggregate is None) for stats, aggregate in parts]  # + a count column for means
    total, rows, column = sum(widths), [], 0
    spans = []
    for (stats, aggregate), width in zip(parts, widths, strict=True):
        block = np.zeros((len(stats), total))
        block[:, column:column + stats.shape[1]] = stats
        if aggregate is None:
            block[:, column + width - 1] = 1.0
        rows.append(block)
        spans.append((column, width, aggregate))
        column += width

    def aggregate(sums: np.ndarray) -> np.ndarray:
        values = [sums[..., start] / sums[..., start + width - 1] if member is None
                  else member(sums[..., start:start + width]) for start, width, member in spans]
        return np.mean(values, axis=0)

    return np.vstack(rows), aggregate


def _macro(rows: Sequence[Mapping[str, Any]], run: Mapping[str, Any], stage: str) -> tuple[np.ndarray, Aggregate]:
    """The mixture's macro mean: each task's own metric (the one whose mean reproduces metrics.json's macro)."""
    tasks = sorted({str(row["task"]) for row in rows})
    choices = [[key.rsplit("/", 1)[1] for key in run if key.startswith(f"{stage}/{task}/")
                and key.rsplit("/", 1)[1] != "loss"] for task in tasks]
    reported = run.get(f"{stage}/{MACRO}")
    for names in itertools.product(*choices):
        if reported is not None and math.isclose(np.mean([run[f"{stage}/{t}/{n}"] for t, n in zip(
                tasks, names, strict=True)]), reported, abs_tol=TOLERANCE):
            parts = [_single([row for row in rows if row["task"] == task], name)
                     for task, name in zip(tasks, names, strict=True)]
            return _block(parts)
    raise Unavailable(f"no choice of the tasks' metrics reproduces {stage}/{MACRO}")


def run_outcomes(run: Mapping[str, Any], metric: str) -> Outcomes:
    """The run's `metric` (`test/acc`, `test/<task>/acc`, `test/macro`, `val/acc`, ...) per example of its stage;
    Unavailable (with the reason) when it has no predictions or they do not reproduce its metrics.json. Cached
    while the predictions file and the run's metrics of that stage are unchanged."""
    stage = metric.split("/", 1)[0]
    built = _run_file(Path(str(run.get("path", ""))) / FILES.get(stage, PREDICTIONS_FILE)).built
    key = (metric, tuple(sorted((k, v) for k, v in run.items() if k.startswith(f"{stage}/"))))
    if key not in built:
        try:
            built[key] = _build(run, metric)
        except Unavailable as why:
            built[key] = why
    found = built[key]
    if isinstance(found, Unavailable):
        raise Unavailable(str(found))
    return found


def _build(run: Mapping[str, Any], metric: str) -> Outcomes:
    stage, name = metric.split("/", 1)
    if stage not in FILES:
        raise Unavailable(f"no predictions are saved for {stage}")
    rows = list(prediction_rows(run, stage))
    mixture = bool(rows) and "task" in rows[0]
    if name == MACRO and mixture:
        stats, aggregate = _macro(rows, run, stage)
        rows = [row for task in sorted({str(r["task"]) for r in rows}) for row in rows if row["task"] == task]
    elif "/" in name and mixture:
        task, name = name.rsplit("/", 1)
        rows = [row for row in rows if row["task"] == task]
        stats, aggregate = _single(rows, name)
    else:
        stats, aggregate = _single(rows, name)
    keys = tuple((str(row.get("task", "")), int(row["row_index"])) for row in rows)
    strata = np.unique([key[0] for key in keys], return_inverse=True)[1]
    outcomes = Outcomes(keys, stats, strata, aggregate)
    reported = run.get(metric)
    if not isinstance(reported, float) or not math.isclose(outcomes.value(), reported, abs_tol=TOLERANCE):
        raise Unavailable(f"{FILES[stage]} gives {metric} {outcomes.value():.6f}, metrics.json says {reported}")
    return outcomes
