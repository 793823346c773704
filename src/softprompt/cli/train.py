"""softprompt-train: the Hydra app that runs one job per configuration (`-m` for a sweep).

A single run that fails exits with status 2 and one line for our errors, and for a write the OS refuses (a full
disk, a read-only file system: `training.outputs`). A job of a multirun that fails writes failed.json and returns
None, so the sweep goes on (training.failures.FailureSummary reports it); a write the OS refuses stops the sweep.
Ctrl-C, at any moment, prints one line saying what it interrupted and how to resume, and exits with status 130.

This module imports only what that line needs; `main` imports Hydra, Lightning and the rest when it runs, and
Ctrl-C during those imports prints the line and ends the process at once.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import Any

from softprompt.training.interrupts import (
    EXIT_STATUS,
    Interrupted,
    JobContext,
    ctrl_c_pressed,
    interrupted_line,
    watch_ctrl_c,
)

_JOB: list[JobContext] = []  # the job that runs (or last ran) in this process, for the Ctrl-C line


def _job(cfg: Any) -> float | None:
    """Hydra's task function; returns the validation selection metric (the fold mean under cv.mode=all), which
    sweepers such as Optuna optimise, or None for a failed job of a multirun."""
    import functools
    import logging

    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    from lightning.fabric.utilities.rank_zero import rank_zero_only

    from softprompt.config.mixture import tasks_from_overrides
    from softprompt.errors import SoftPromptError
    from softprompt.training.cv import run_job
    from softprompt.training.distributed import distributed_job, use_job_worker_command
    from softprompt.training.failures import clear_failure, one_line, write_failure
    from softprompt.training.outputs import OutputWriteError, output_write_error
    from softprompt.training.run import run_and_finish

    log = logging.getLogger("softprompt")
    use_job_worker_command()
    hydra_cfg = HydraConfig.get()
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    output_dir = Path(cfg.paths.output_dir)
    overrides = list(hydra_cfg.overrides.task)
    _JOB[:] = [JobContext(output_dir, Path(hydra_cfg.sweep.dir) if multirun else None, hydra_cfg.job.get("num"),
                          cfg.get("ckpt_path"))]
    try:
        tasks = tasks_from_overrides(cfg, hydra_cfg.overrides.task)  # task=[a,b]: a task mixture
        with distributed_job():
            score = run_job(cfg, functools.partial(run_and_finish, tasks=tasks))
    except Exception as error:
        if ctrl_c_pressed():  # library code caught the KeyboardInterrupt and failed otherwise
            raise Interrupted("preparing the job", output_dir) from None
        key, value = ("hydra.sweep.dir", hydra_cfg.sweep.dir) if multirun else ("hydra.run.dir", str(output_dir))
        resume = f"hydra.sweep.dir={value} resume_sweep=true" if multirun else f"hydra.run.dir={value}"

        def refused(failure: BaseException) -> SoftPromptError | None:
            return output_write_error(failure, output_dir, Path(cfg.paths.cache_dir).expanduser(), key, value, resume)

        error = refused(error) or error
        if not multirun:
            if isinstance(error, SoftPromptError):
                print(f"softprompt: error: {error}", file=sys.stderr)
                sys.exit(2)
            raise
        job = f"job #{hydra_cfg.job.num} ({' '.join(overrides)})"
        if isinstance(error, OutputWriteError):  # every later job would fail alike: stop the sweep
            print(f"softprompt: error: {job} failed: {error}", file=sys.stderr)
            sys.exit(2)
        try:
            if rank_zero_only.rank == 0:
                write_failure(output_dir, error, overrides, hydra_cfg.job.get("num"))
        except OSError as not_recorded:
            if refused(not_recorded) is None:
                raise
            print(f"softprompt: error: {job} failed: {one_line(error)}; and {refused(not_recorded)}", file=sys.stderr)
            sys.exit(2)
        print(f"softprompt: error: {job} failed: {one_line(error)}", file=sys.stderr)
        log.error("job failed; the sweep goes on", exc_info=not isinstance(error, SoftPromptError))
        _JOB[0].finished = True
        return None
    _JOB[0].finished = True
    if rank_zero_only.rank == 0:
        clear_failure(output_dir)
    return score


def _worker() -> bool:
    """A DDP worker process that rank 0 started: rank 0 speaks for the job."""
    return os.environ.get("LOCAL_RANK", "0") != "0" or os.environ.get("NODE_RANK", "0") != "0"


# What `_job` needs, loaded before Hydra starts (most of the start-up time). Ctrl-C during these imports ends the
# process at once: some libraries catch a KeyboardInterrupt raised inside their imports and go on half-imported.
HEAVY_MODULES = ("hydra", "softprompt.training.run", "softprompt.training.cv", "softprompt.training.distributed",
                 "softprompt.training.failures", "softprompt.training.outputs", "softprompt.config.mixture")


def _exit_while_starting(signum: int, frame: Any) -> None:
    if not _worker():
        print(interrupted_line(KeyboardInterrupt(), None), file=sys.stderr, flush=True)
    os._exit(EXIT_STATUS)


def main() -> None:
    """The console entry point: the Hydra app, with Ctrl-C (during the imports too) as one line and status 130."""
    import importlib

    previous = signal.signal(signal.SIGINT, _exit_while_starting)
    try:
        for name in HEAVY_MODULES:
            importlib.import_module(name)
        watch_ctrl_c()  # from here on Ctrl-C raises KeyboardInterrupt
        import hydra

        from softprompt.config.compose import config_dir

        hydra.main(version_base="1.3", config_path=config_dir(), config_name="train")(_job)()
    except KeyboardInterrupt as interrupt:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C does not cut the line short
        if not _worker():
            print(interrupted_line(interrupt, _JOB[0] if _JOB else None), file=sys.stderr)
        sys.exit(EXIT_STATUS)
    finally:
        signal.signal(signal.SIGINT, previous)

if __name__ == "__main__":
    main()
