"""Each run alone against their ensemble: the runs of one configuration (every seed and fold: no selection)
combined per test input from their saved test predictions, as `MixedPredictor.ensemble` combines live prompts
(softprompt.artifacts.ensemble). Members must have predicted the same test rows with the same labels, and a
member's predictions must reproduce its own metrics.json; anything else is refused, never averaged over."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score

from softprompt.analysis.report.collect import ReportError
from softprompt.analysis.report.comparisons import config_spread
from softprompt.analysis.report.intervals import from_matrix
from softprompt.analysis.report.statistics import INTERVAL_LEVEL
from softprompt.artifacts.ensemble import EnsembleError, combine
from softprompt.training.results import PREDICTIONS_FILE

METRICS = ("acc", "f1")  # the classification metrics, computed as the runs compute them


def _metrics(predicted: Sequence[int], labels: Sequence[int], width: int) -> dict[str, float]:
    preds, target = torch.tensor(list(predicted)), torch.tensor(list(labels))
    return {"acc": float(MulticlassAccuracy(width, average="micro")(preds, target)),
            "f1": float(MulticlassF1Score(width, average="macro")(preds, target))}


def _predictions(run: Mapping[str, Any]) -> list[dict[str, Any]]:
    path = Path(run["path"]) / PREDICTIONS_FILE
    try:
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    except (OSError, json.JSONDecodeError) as error:
        raise ReportError(f"ensemble: cannot read {path}: {error}") from None
    if not rows or not all(isinstance(r.get("probabilities"), list) for r in rows):
        raise ReportError(f"ensemble: {path} has no label probabilities (ensembles need classification runs)")
    return rows


def ensemble_members(runs: Sequence[Mapping[str, Any]], vote: str) -> dict[str, Any]:
    """One configuration: each member's test metrics and the ensemble's, over the same test rows."""
    members = [(run, _predictions(run)) for run in runs]
    first_run, first = members[0]
    rows, labels = [r["row_index"] for r in first], [r["label"] for r in first]
    width = len(first[0]["probabilities"])
    singles = []
    for run, predictions in members:
        if [r["row_index"] for r in predictions] != rows or [r["label"] for r in predictions] != labels:
            raise ReportError(f"ensemble: {run['path']} predicted other test rows or labels than {first_run['path']}; "
                              "an ensemble combines runs on the same test split")
        scores = _metrics([r["prediction"] for r in predictions], labels, width)
        reported = run.get("test/acc")
        if reported is not None and not math.isclose(scores["acc"], reported, abs_tol=1e-6):
            raise ReportError(f"ensemble: {run['path']}/{PREDICTIONS_FILE} gives test acc {scores['acc']:.6f}, its "
                              f"metrics.json says {reported:.6f}")
        singles.append({"path": str(run["path"]), "seed": run.get("seed"), "fold": run.get("fold"), **scores})
    try:
        combined = combine([[r["probabilities"] for r in predictions] for _, predictions in members], vote)
    except EnsembleError as error:
        raise ReportError(f"ensemble: {error}") from None
    truth = np.asarray(labels)
    member_correct = np.array([[r["prediction"] for r in predictions] for _, predictions in members]) == truth
    ensemble_correct = np.array([c.label for c in combined]) == truth
    return {"members": singles, "ensemble": _metrics([c.label for c in combined], labels, width),
            "test_rows": len(rows), "ensemble_correct": ensemble_correct.astype(float),
            "members_correct": member_correct.mean(axis=0)}


def _accuracy_gain(result: Mapping[str, Any]) -> dict[str, float]:
    """The ensemble's accuracy with its interval over test examples, and its gain over the members' mean accuracy,
    paired on the examples: both are about THESE members (the ensemble is one predictor built from them), so they
    cover test-set sampling, not a new draw of members."""
    alone = from_matrix(result["ensemble_correct"][None, :])
    gain = from_matrix((result["ensemble_correct"] - result["members_correct"])[None, :])
    (low, high), (gain_low, gain_high) = alone.interval((0.0, 1.0)), gain.interval((-1.0, 1.0))
    return {"ensemble_low_acc": low, "ensemble_high_acc": high, "gain_acc": gain.estimate,
            "gain_low_acc": gain_low, "gain_high_acc": gain_high, "gain_p_acc": gain.p_value()}


def ensemble_table(runs: Sequence[Mapping[str, Any]], group_by: Sequence[str], vote: str) -> pd.DataFrame:
    """One row per configuration: n members, their mean test metrics with an interval over members and test
    examples (as the report's), the best and worst member, and the ensemble's metrics (no member is chosen: all of
    them are combined)."""
    groups: dict[tuple, list[Mapping[str, Any]]] = {}
    for run in runs:
        groups.setdefault(tuple(run.get(key) for key in group_by), []).append(run)
    table = []
    for key, members in groups.items():
        result = ensemble_members(sorted(members, key=lambda r: (repr(r.get("fold")), repr(r.get("seed")))), vote)
        row: dict[str, Any] = dict(zip(group_by, key, strict=True))
        row |= {"n": len(members), "test_rows": result["test_rows"], "vote": vote}
        for metric in METRICS:
            values = [m[metric] for m in result["members"]]
            low, high = config_spread(members, f"test/{metric}")[0].interval((0.0, 1.0))
            row |= {f"members_mean_{metric}": sum(values) / len(values), f"members_low_{metric}": low,
                    f"members_high_{metric}": high, f"members_min_{metric}": min(values),
                    f"members_max_{metric}": max(values), f"ensemble_{metric}": result["ensemble"][metric]}
        table.append(row | _accuracy_gain(result))
    return pd.DataFrame(table)


def ensemble_markdown(table: pd.DataFrame, group_by: Sequence[str], vote: str) -> str:
    """The table as the report prints and writes it, with its rule, n and interval named."""
    lines = [f"Prompt ensemble (vote={vote}) against each member alone, on the test split. Members: every run of "
             "the configuration (all seeds and folds, none selected); n = members; member interval: "
             f"{int(INTERVAL_LEVEL * 100)}% CI of the members' mean over members and test examples. Ensemble acc "
             f"and its gain over the members' mean acc (paired on the test examples, t test): "
             f"{int(INTERVAL_LEVEL * 100)}% CI over test examples, for these members (the ensemble is one predictor "
             "built from them).", "",
             "| " + " | ".join([*group_by, "n", "test rows", "members acc (interval)", "best/worst member acc",
                                 "ensemble acc (interval)", "ensemble minus members' mean acc [interval], p",
                                 "members f1", "ensemble f1"]) + " |",
             "|" + "---|" * (len(group_by) + 8)]
    for _, row in table.iterrows():
        cells = [str(row[key]) for key in group_by]
        cells += [str(row["n"]), str(row["test_rows"]),
                  f"{row['members_mean_acc']:.4f} ({_interval(row, 'acc')})",
                  f"{row['members_max_acc']:.4f} / {row['members_min_acc']:.4f}",
                  f"{row['ensemble_acc']:.4f} ({row['ensemble_low_acc']:.4f}-{row['ensemble_high_acc']:.4f})",
                  f"{row['gain_acc']:+.4f} [{row['gain_low_acc']:+.4f}, {row['gain_high_acc']:+.4f}], "
                  f"p={row['gain_p_acc']:.3g}",
                  f"{row['members_mean_f1']:.4f}", f"{row['ensemble_f1']:.4f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _interval(row: Mapping[str, Any], metric: str) -> str:
    low, high = row[f"members_low_{metric}"], row[f"members_high_{metric}"]
    return "n < 2" if math.isnan(low) else f"{low:.4f}-{high:.4f}"
