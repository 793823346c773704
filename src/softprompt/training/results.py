"""What a finished run writes next to its logs: metrics.json and test predictions, each atomically (a killed run
leaves the old file or none, never half of one)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from softprompt.config.atomic import atomic_open, atomic_write_text

METRICS_FILE = "metrics.json"
PREDICTIONS_FILE = "test_predictions.jsonl"
CV_METRICS_FILE = "cv_metrics.json"   # a cv.mode=all job: the mean over its folds (each fold has metrics.json)
FOLD_DIR_PREFIX = "fold_"             # cv.mode=all: fold k of the job writes under fold_<k>/
LAST_CHECKPOINT = "checkpoints/last.ckpt"   # the latest training state (ckpt_path=auto resumes from it)
# A job that raised: {"error": one line, "error_type", "overrides", "job_num"}; removed when the job later succeeds.
FAILED_FILE = "failed.json"


def _plain(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value


def stage_metrics(metrics: Mapping[str, Any], stage: str) -> dict[str, float]:
    """`{"val/acc": t}` -> `{"acc": 0.8}` for one stage."""
    prefix = f"{stage}/"
    return {k[len(prefix):]: float(_plain(v)) for k, v in metrics.items() if k.startswith(prefix)}


def write_run_results(output_dir: Path, summary: Mapping[str, Any], predictions: list[dict]) -> Path:
    """test_predictions.jsonl, then metrics.json: the last file a run writes marks it finished (resume_sweep)."""
    output_dir.mkdir(parents=True, exist_ok=True)
    with atomic_open(output_dir / PREDICTIONS_FILE, "w", encoding="utf-8") as handle:
        for row in sorted(predictions, key=lambda r: (r.get("task", ""), r["row_index"])):  # dataset order
            handle.write(json.dumps(row) + "\n")
    return atomic_write_text(output_dir / METRICS_FILE, json.dumps(summary, indent=2, sort_keys=False) + "\n")
