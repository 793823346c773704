"""The run summary: what one finished run reports, written as its metrics.json by `summary_json` and read back by
`read_summary` / `load_summary`, which the report, cv, transfer and the artifact share.

metrics.json holds these fields as top-level keys, in this order. A file written before a field existed reads
with that field's old meaning (`OLD_MEANINGS`, else None: not recorded), so old sweeps still report.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class RunSummary:
    """One run's settings, sizes and scores (metrics.json)."""

    method: str
    backbone: str | None
    backbone_source: str | None
    backbone_revision: str | None
    backbone_fingerprint_start: str | None
    backbone_fingerprint_end: str | None
    task: str | None
    task_type: str  # classification, generation or mixture
    tasks: list[str] | None  # a mixture's tasks, in task-id order
    selection_metric: str | None  # val/<the objective's metric>
    num_virtual_tokens: int | None
    init: str | None
    lr: float | None  # None when nothing trains
    fold: int | None  # None without cv.num_folds
    num_folds: int | None
    seed: int | None
    trainable_params: int | None
    folded_params: int | None
    total_params: int | None
    val: dict[str, float] | None
    test: dict[str, float] | None
    steps: int | None
    best_step: int | None
    best_checkpoint: str | None
    wall_seconds: float | None
    step_seconds: dict[str, Any] | None  # inside training/evaluation steps; the rest of wall_seconds is fixed cost
    precision: dict[str, str] | None  # {requested, trainer, backbone_dtype, why}
    quantization: str  # backbone.quantization the frozen backbone ran with (none: full precision)
    transfer_source: str | None
    transfer: dict[str, Any] | None  # {source_task, source_run, source_val, source_test}
    # Examples whose text task.max_length cut, and split sizes before and after data.max_samples.
    truncated: dict[str, Any] | None
    split_sizes: dict[str, Any] | None
    # k-fold runs: {stratified_by, grouped_by (task.columns.group or null), groups: {train, validation}}.
    fold_split: dict[str, Any] | None
    # task.references=grouped: {validation, test: {sources, references}} scored (a mixture's: per task); else null.
    references: dict[str, Any] | None
    method_config: dict[str, Any]  # the resolved method group
    tags: list[str]
    overrides: list[str]  # the job's command-line overrides

    def record(self) -> dict[str, Any]:
        """The fields as metrics.json holds them, in order."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    @property
    def selection_value(self) -> float | None:
        """The validation value of the selection metric (None where the run has none)."""
        name = (self.selection_metric or "").removeprefix("val/")
        return (self.val or {}).get(name)


# What a field meant before runs recorded it: every run was a single classification task, untagged, with no
# transfer, folds grouping, grouped references or recorded overrides; the method config was not kept.
OLD_MEANINGS: dict[str, Any] = {"task_type": "classification", "tasks": None, "transfer_source": None,
                                "quantization": "none",
                                "transfer": None, "fold_split": None, "references": None, "method_config": {},
                                "tags": [], "overrides": []}


def summary_json(summary: RunSummary | Mapping[str, Any]) -> str:
    """metrics.json's text (of a summary, or of a record as `RunSummary.record` gives it)."""
    record = summary.record() if isinstance(summary, RunSummary) else summary
    return json.dumps(record, indent=2, sort_keys=False) + "\n"


def read_summary(data: Mapping[str, Any]) -> RunSummary:
    """A summary from metrics.json's content; a key an older file lacks takes its old meaning (`OLD_MEANINGS`, else
    None), and keys this version does not know are ignored."""
    values = {f.name: data[f.name] if f.name in data else OLD_MEANINGS.get(f.name)
              for f in dataclasses.fields(RunSummary)}
    if "quantization" not in data:  # runs between quantisation and its summary field name it only as an override
        values["quantization"] = next((str(o).split("=", 1)[1] for o in data.get("overrides") or []
                                       if str(o).startswith("backbone.quantization=")), "none")
    return RunSummary(**values)


def load_summary(path: Path) -> RunSummary:
    """The summary in a metrics.json file (json and OS errors pass through: callers say what they mean)."""
    return read_summary(json.loads(Path(path).read_text()))
