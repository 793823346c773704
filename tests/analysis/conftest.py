"""Synthetic sweeps whose runs also saved per-example predictions, as softprompt-train leaves them: each run's
`test_predictions.jsonl` (label, prediction, probabilities; `val_predictions.jsonl` alike where asked) and a
metrics.json whose acc and f1 are the ones those predictions give (the report refuses predictions that do not
reproduce metrics.json)."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pytest
import torch
from torchmetrics.classification import MulticlassF1Score

LABELS = 2
BEST_CONFIGURATION = ("prompt_tuning", 50, "class_labels", 0.3)  # of conftest's SWEEP_ACCURACIES


def _f1(labels: Sequence[int], predicted: Sequence[int]) -> float:
    return float(MulticlassF1Score(LABELS, average="macro")(torch.tensor(list(predicted)), torch.tensor(list(labels))))


def write_predictions(run_dir: Path, labels: Sequence[int], correct: Sequence[bool], stage: str = "test",
                      first_row: int = 0) -> Path:
    """The run's test (or `stage="val"`: validation) predictions: example i (row_index first_row + i) has label
    `labels[i]` and is predicted right where `correct[i]`; metrics.json's acc and f1 of that stage become what those
    predictions score."""
    predicted = [label if right else 1 - label for label, right in zip(labels, correct, strict=True)]
    rows = [{"row_index": first_row + i, "label": int(label), "prediction": int(guess),
             "probabilities": [0.3, 0.7] if guess else [0.7, 0.3]}
            for i, (label, guess) in enumerate(zip(labels, predicted, strict=True))]
    (run_dir / f"{stage}_predictions.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    path = run_dir / "metrics.json"
    data = json.loads(path.read_text())
    data[stage] = {**data[stage], "acc": float(np.mean(correct)), "f1": _f1(labels, predicted)}
    path.write_text(json.dumps(data))
    return run_dir


def set_metrics(run_dir: Path, **changes: object) -> None:
    """Change top-level fields of a run's metrics.json (`val={"acc": 0.8}`, `trainable_params=0`)."""
    path = run_dir / "metrics.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


@pytest.fixture(scope="session")
def predicted_run(write_run) -> Callable[..., Path]:
    """`predicted_run(run_dir, method, fold, correct, labels, val_acc, seed=42, length=20, lr=0.3, num_folds=2,
    **metrics)`: a finished run (write_run) with its test predictions; `correct` says which examples it gets
    right."""
    def make(run_dir: Path, method: str, fold: int | None, correct: Sequence[bool], labels: Sequence[int],
             val_acc: float, seed: int = 42, length: int | None = 20, lr: float | None = 0.3,
             num_folds: int = 2, **metrics: object) -> Path:
        write_run(run_dir, method, length, "vocab" if length else None, lr, fold, seed, float(np.mean(correct)),
                  val_acc=val_acc, num_folds=num_folds)
        write_predictions(run_dir, labels, correct)
        if metrics:
            set_metrics(run_dir, **metrics)
        return run_dir

    return make


@pytest.fixture(scope="session")
def validation_predictions() -> Callable[..., Path]:
    """`validation_predictions(run_dir, labels, correct, first_row=0)`: the run's val_predictions.jsonl, and
    metrics.json's val acc and f1 from it (write_predictions with stage="val")."""
    def make(run_dir: Path, labels: Sequence[int], correct: Sequence[bool], first_row: int = 0) -> Path:
        return write_predictions(run_dir, labels, correct, stage="val", first_row=first_row)

    return make


@pytest.fixture(scope="session")
def best_configuration() -> tuple:
    """The configuration of `sweep_accuracies` with the best mean (on validation and on test)."""
    return BEST_CONFIGURATION
