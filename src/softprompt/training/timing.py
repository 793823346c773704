"""Where a job's wall time goes: seconds inside training and evaluation steps, per stage. The rest of the job
(loading, data, trainer start-up, fingerprints, checkpoints, the artifact) is its fixed cost; metrics.json records
both, so a sweep's overhead can be read off its runs."""

from __future__ import annotations

import time
from typing import Any

import lightning as L


class StepTimer(L.Callback):
    """Sums the seconds from each batch's start hook to its end hook (forward, backward and optimizer step for
    training batches), per stage."""

    def __init__(self) -> None:
        self.seconds = {"train": 0.0, "validation": 0.0, "test": 0.0}
        self._started = 0.0

    def _start(self, *args: Any, **kwargs: Any) -> None:
        self._started = time.perf_counter()

    def _add(self, stage: str) -> None:
        self.seconds[stage] += time.perf_counter() - self._started

    on_train_batch_start = on_validation_batch_start = on_test_batch_start = _start

    def on_train_batch_end(self, *args: Any, **kwargs: Any) -> None:
        self._add("train")

    def on_validation_batch_end(self, *args: Any, **kwargs: Any) -> None:
        self._add("validation")

    def on_test_batch_end(self, *args: Any, **kwargs: Any) -> None:
        self._add("test")

    def rounded(self) -> dict[str, float]:
        return {stage: round(seconds, 3) for stage, seconds in self.seconds.items()}
