"""A job that fails does not end its sweep: the failure is recorded in the job's folder (failed.json), the
multirun goes on, and when it ends one line lists every failed job and the process exits non-zero.

Hydra's basic launcher stops a multirun at the first job that raises, so the task function records the error and
returns instead of raising. `FailureSummary` (a Hydra callback, conf/hydra/default.yaml) reads the failed.json
files of the sweep folder, so it works for launchers that run jobs in other processes too (submitit).
`resume_sweep=true` reruns failed jobs: they have no metrics.json, and a job that succeeds removes its failed.json.
"""

from __future__ import annotations

import json
import logging
import sys
import traceback
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from softprompt.config.atomic import atomic_write_text
from softprompt.errors import SoftPromptError
from softprompt.training.outputs import OutputDirCheck
from softprompt.training.results import FAILED_FILE

log = logging.getLogger("softprompt")
HYDRA_DIR = ".hydra"


def one_line(error: BaseException) -> str:
    """The error as the one line a user reads: our errors are sentences; others get their type."""
    text = " ".join(str(error).split()) or type(error).__name__
    return text if isinstance(error, SoftPromptError) else f"{type(error).__name__}: {text}"


def write_failure(output_dir: Path, error: BaseException, overrides: list[str], job_num: int | None) -> Path:
    """failed.json in the job's folder: the one-line error, its type and the job's overrides."""
    output_dir.mkdir(parents=True, exist_ok=True)
    path = output_dir / FAILED_FILE
    record = {"error": one_line(error), "error_type": type(error).__name__, "overrides": overrides,
              "job_num": job_num}
    if not isinstance(error, SoftPromptError):
        record["traceback"] = "".join(traceback.format_exception(error))
    return atomic_write_text(path, json.dumps(record, indent=2) + "\n")


def clear_failure(output_dir: Path) -> None:
    """A job that succeeded (on a retry, say) is no longer failed."""
    (output_dir / FAILED_FILE).unlink(missing_ok=True)


def shared_overrides(sweep_dir: Path) -> list[str]:
    """The overrides every job of the sweep was given (none for a single job): they name no job."""
    per_job = []
    for path in sweep_dir.rglob(f"{HYDRA_DIR}/overrides.yaml"):
        try:
            per_job.append(set(OmegaConf.to_container(OmegaConf.load(path))))
        except Exception:  # an unreadable file names nothing; the summary still lists the job
            continue
    return sorted(set.intersection(*per_job)) if len(per_job) > 1 else []


def sweep_failures(sweep_dir: Path) -> tuple[list[dict[str, Any]], int]:
    """(failed.json records under the sweep folder, the number of jobs it holds)."""
    jobs = [p.parent for p in sweep_dir.rglob(HYDRA_DIR) if p.is_dir()]
    failures = []
    for path in sorted(sweep_dir.rglob(FAILED_FILE), key=lambda p: str(p)):
        try:
            failures.append({"path": str(path.parent), **json.loads(path.read_text())})
        except (OSError, json.JSONDecodeError):
            failures.append({"path": str(path.parent), "error": f"unreadable {FAILED_FILE}", "overrides": []})
    return failures, len(jobs)


def summary_line(failures: list[dict[str, Any]], jobs: int, shared: list[str] = ()) -> str:
    """`1 of 3 jobs failed: #1 method.init=bogus: method.init='bogus' is invalid: ...`; each job is named by its
    own overrides, less the `shared` ones every job of the sweep was given."""
    def name(failure: dict[str, Any]) -> str:
        own = [o for o in failure.get("overrides") or [] if o not in shared]
        return " ".join(own) or failure["path"]

    parts = [f"#{f.get('job_num', '?')} {name(f)}: {f['error']}" for f in failures]
    return f"{len(failures)} of {max(jobs, len(failures))} jobs failed: " + "; ".join(parts)


class FailureSummary(OutputDirCheck):
    """softprompt-train's Hydra callback (conf/hydra/default.yaml). At the start, the output folder is checked
    (`OutputDirCheck`: one line, exit status 2, when it cannot be created or written); at the end of a multirun, one
    line names every failed job, then exit status 1."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        failures, jobs = sweep_failures(Path(config.hydra.sweep.dir))
        if failures:
            shared = shared_overrides(Path(config.hydra.sweep.dir))
            print(f"softprompt: {summary_line(failures, jobs, shared)}", file=sys.stderr)
            raise SystemExit(1)
