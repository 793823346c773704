"""What a finished run writes next to its logs: test and validation predictions, metrics.json and its prompt/ folder,
as one commit:
a run that fails or is killed while writing them leaves them as they were (or none), never some without the
others; in particular never a loadable prompt/ without the metrics.json that marks the run finished."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from softprompt.artifacts.summary import RunSummary, summary_json
from softprompt.config.atomic import StagedWrites

METRICS_FILE = "metrics.json"
PREDICTIONS_FILE = "test_predictions.jsonl"
# The validation pass whose metrics metrics.json reports (the selected checkpoint's), in the same row format.
VAL_PREDICTIONS_FILE = "val_predictions.jsonl"
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


def _jsonl(predictions: list[dict]) -> str:
    rows = sorted(predictions, key=lambda r: (r.get("task", ""), r["row_index"]))  # dataset order
    return "".join(json.dumps(row) + "\n" for row in rows)


def write_run_results(output_dir: Path, summary: RunSummary | Mapping[str, Any], predictions: list[dict],
                      folders: Mapping[str, Mapping[str, bytes]] | None = None,
                      val_predictions: list[dict] | None = None) -> Path:
    """test_predictions.jsonl, val_predictions.jsonl (when given), metrics.json and `folders` ({name: {file name:
    bytes}}, the artifact's prompt/) in `output_dir`, together: each is written in full as a temporary first (a
    full disk fails here, and changes nothing), then they are renamed into place in that order with Ctrl-C held
    off. metrics.json marks the run finished (resume_sweep), and the artifact appears only after it. Returns
    metrics.json's path."""
    output_dir.mkdir(parents=True, exist_ok=True)
    if val_predictions is None:  # an earlier run's file in this folder must not pass for this run's
        (output_dir / VAL_PREDICTIONS_FILE).unlink(missing_ok=True)
    with StagedWrites() as staged:
        staged.file(output_dir / PREDICTIONS_FILE, _jsonl(predictions))
        if val_predictions is not None:
            staged.file(output_dir / VAL_PREDICTIONS_FILE, _jsonl(val_predictions))
        staged.file(output_dir / METRICS_FILE, summary_json(summary))
        for name, files in (folders or {}).items():
            staged.directory(output_dir / name, files)
        staged.commit()
    return output_dir / METRICS_FILE
