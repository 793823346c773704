"""Finding a sweep's runs: every metrics.json as a flat record, and every job that left none (failed.json, a
Hydra job folder without output, a cv.mode=all job that stopped early) as an Incomplete entry."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from softprompt.artifacts.summary import RunSummary, read_summary
from softprompt.errors import SoftPromptError
from softprompt.training.results import CV_METRICS_FILE, FAILED_FILE, FOLD_DIR_PREFIX, METRICS_FILE

SETTING_KEYS = ("method", "backbone", "quantization", "task", "num_virtual_tokens", "init", "lr", "transfer_source")
PAIR_KEYS = ("fold", "seed")
RUN_FIELDS = ("trainable_params", "wall_seconds", "selection_metric", "num_folds", "steps")
STAGES = ("val", "test")
METHOD_CONFIG = "method_config"
HYDRA_DIR = ".hydra"
SCALAR = (str, int, float, bool, type(None))


class ReportError(SoftPromptError):
    """A bad argument or input; shown as one `softprompt-report: error: ...` line, exit status 2."""


@dataclass(frozen=True)
class Incomplete:
    """A job that produced no usable metrics.json; listed in the report so it is never dropped silently."""

    path: Path
    reason: str


@dataclass
class Collection:
    """Runs found under the given paths (flat records) plus the jobs that did not finish."""

    runs: list[dict[str, Any]] = field(default_factory=list)
    incomplete: list[Incomplete] = field(default_factory=list)


def _flatten(mapping: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    """Nested config -> `prefix.a.b` scalar keys; lists and other containers are not settings one groups by."""
    flat: dict[str, Any] = {}
    for key, value in mapping.items():
        name = f"{prefix}.{key}"
        if isinstance(value, Mapping):
            flat.update(_flatten(value, name))
        elif isinstance(value, SCALAR):
            flat[name] = value
    return flat


def run_record(data: RunSummary | Mapping[str, Any], path: Path) -> dict[str, Any]:
    """One run's summary (or metrics.json's content) as a flat record (`val/acc`, `method_config.lr`, ...), so runs
    group like table rows."""
    summary = data if isinstance(data, RunSummary) else read_summary(data)
    record: dict[str, Any] = {key: getattr(summary, key) for key in (*SETTING_KEYS, *PAIR_KEYS)}
    record |= {key: getattr(summary, key) for key in RUN_FIELDS}
    record |= _flatten(summary.method_config or {}, METHOD_CONFIG)
    for stage in STAGES:
        for name, value in (getattr(summary, stage) or {}).items():
            if isinstance(value, int | float) and not isinstance(value, bool):
                record[f"{stage}/{name}"] = float(value)
    record["path"] = str(path)
    return record


def _load_run(metrics_path: Path) -> dict[str, Any] | Incomplete:
    """Parse one metrics.json; an unreadable or malformed file becomes an Incomplete entry, not a crash."""
    run_dir = metrics_path.parent
    try:
        data = json.loads(metrics_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        return Incomplete(run_dir, f"unreadable {METRICS_FILE}: {error}")
    if not isinstance(data, dict) or "method" not in data:
        return Incomplete(run_dir, f"malformed {METRICS_FILE}: not an object with a 'method' key")
    if not any(isinstance(data.get(stage), dict) for stage in STAGES):
        return Incomplete(run_dir, f"malformed {METRICS_FILE}: no 'val' or 'test' metrics")
    return run_record(read_summary(data), run_dir)


def _failure(path: Path) -> str:
    """`failed: <error> (overrides: a=1 b=2)` from a failed.json, so the job can be fixed and rerun."""
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        return f"failed (unreadable {FAILED_FILE}: {error})"
    data = data if isinstance(data, dict) else {}
    overrides = " ".join(map(str, data.get("overrides") or []))
    return f"failed: {data.get('error') or 'no error recorded'}" + (f" (overrides: {overrides})" if overrides else "")


def _unfinished_cv_job(job_dir: Path, dirnames: Sequence[str], filenames: Sequence[str]) -> Incomplete | None:
    """A cv.mode=all job (folds under fold_<k>/) that stopped before writing its fold mean."""
    if CV_METRICS_FILE in filenames:
        return None
    done = [d for d in sorted(dirnames) if d.startswith(FOLD_DIR_PREFIX) and (job_dir / d / METRICS_FILE).is_file()]
    failed = f"{_failure(job_dir / FAILED_FILE)}; " if FAILED_FILE in filenames else ""
    return Incomplete(job_dir, f"{failed}cv.mode=all job stopped before {CV_METRICS_FILE}; finished folds: "
                               f"{', '.join(done) or 'none'}")


def _scan(root: Path) -> Iterable[tuple[Path, dict[str, Any] | Incomplete]]:
    """(run dir, run or Incomplete) for every dir under root with metrics.json or failed.json and every Hydra job
    folder. metrics.json beats a stale failed.json (a retry succeeded). A cv.mode=all job is read through its fold
    dirs, and listed itself only when it did not finish."""
    for dirpath, dirnames, filenames in os.walk(root):
        run_dir, is_job = Path(dirpath), HYDRA_DIR in dirnames
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        if METRICS_FILE in filenames:
            yield run_dir, _load_run(run_dir / METRICS_FILE)
        elif is_job and (CV_METRICS_FILE in filenames or any(d.startswith(FOLD_DIR_PREFIX) for d in dirnames)):
            unfinished = _unfinished_cv_job(run_dir, dirnames, filenames)
            if unfinished:
                yield run_dir, unfinished
        elif FAILED_FILE in filenames:
            yield run_dir, Incomplete(run_dir, _failure(run_dir / FAILED_FILE))
        elif is_job:
            yield run_dir, Incomplete(run_dir, f"no {METRICS_FILE} (job missing or failed)")


def collect_runs(paths: Sequence[str | Path]) -> Collection:
    """All runs under `paths` (run dirs, sweep dirs or metrics.json files), plus missing/failed jobs."""
    found: dict[Path, dict[str, Any] | Incomplete] = {}
    for raw in paths:
        path = Path(raw)
        if path.is_file():
            found[path.parent.resolve()] = _load_run(path)
        elif path.is_dir():
            for run_dir, entry in _scan(path):
                found[run_dir.resolve()] = entry
        else:
            raise ReportError(f"path {str(raw)!r} does not exist; pass run dirs, sweep dirs or metrics.json files")
    collection = Collection()
    for _, entry in sorted(found.items()):
        (collection.incomplete if isinstance(entry, Incomplete) else collection.runs).append(entry)
    return collection
