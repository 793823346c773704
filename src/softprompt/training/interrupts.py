"""Ctrl-C: one line that says what was interrupted and how to resume, and exit status 130 (128 + SIGINT).

Lightning catches the KeyboardInterrupt of `trainer.fit` (or validate, test) itself: it calls the callbacks'
`on_exception`, tears down, ignores any further Ctrl-C and raises SystemExit(1). `lightning_call` turns that back
into `Interrupted`, which carries what the run was doing; the CLI adds where the job writes and prints the line.
A run resumes by rerunning the same command in the same output folder: `ckpt_path=auto` (the default) continues
from its `checkpoints/last.ckpt`, written at every validation; a sweep resumes with `resume_sweep=true`.

This module (and training.results) imports nothing heavy: the CLI reads it also when Ctrl-C came during its imports.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from softprompt.training.results import LAST_CHECKPOINT

EXIT_STATUS = 130  # a shell's status for a process ended by SIGINT
T = TypeVar("T")


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during a run: `what` it interrupted ("training at step 7"), in the run's `output_dir`;
    `checkpoint_step` is the step of the run's last.ckpt when known."""

    def __init__(self, what: str, output_dir: Path | None = None, checkpoint_step: int | None = None) -> None:
        self.what, self.output_dir, self.checkpoint_step = what, output_dir, checkpoint_step
        super().__init__(what)


_REQUESTED = threading.Event()


def _on_ctrl_c(signum: int, frame: Any) -> None:
    _REQUESTED.set()
    raise KeyboardInterrupt


def watch_ctrl_c() -> None:
    """Ctrl-C raises KeyboardInterrupt, as by default, and is remembered: library code that catches it (an import
    that swallows it, say) and fails with another error is still reported as interrupted (`ctrl_c_pressed`)."""
    _REQUESTED.clear()
    restore_ctrl_c()


def ctrl_c_pressed() -> bool:
    return _REQUESTED.is_set()


def restore_ctrl_c() -> None:
    """Lightning ignores Ctrl-C after the first one; the rest of the process should not."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, _on_ctrl_c)


def lightning_call(trainer: Any, what: str, function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """`function(*args, **kwargs)` (trainer.fit, validate or test) with Ctrl-C raised as `Interrupted`."""
    try:
        return function(*args, **kwargs)
    except SystemExit:
        if not trainer.interrupted:
            raise
        restore_ctrl_c()
        raise Interrupted(f"{what} at step {trainer.global_step}") from None
    except KeyboardInterrupt as interrupt:  # before Lightning's own handling took over
        if isinstance(interrupt, Interrupted):
            raise
        raise Interrupted(f"{what} at step {trainer.global_step}") from None


@dataclass
class JobContext:
    """What the CLI knows of the job that is running (or last ran): for the line Ctrl-C prints."""

    output_dir: Path
    sweep_dir: Path | None = None  # a multirun's folder
    job_num: int | None = None
    ckpt_path: str | None = "auto"
    finished: bool = False  # the job ended; a multirun was between jobs


def _checkpoint(output_dir: Path, step: int | None, ckpt_path: str | None) -> str | None:
    """How a rerun continues from the run's last.ckpt, or None when it has none."""
    if not (output_dir / LAST_CHECKPOINT).is_file():
        return None
    at = f" (step {step})" if step is not None else ""
    need = "" if ckpt_path in ("auto", "last") else " once you add ckpt_path=auto"
    return f"continues from {LAST_CHECKPOINT}{at}{need}"


NO_CHECKPOINT = "no checkpoint was saved yet (one is saved at every validation)"


def interrupted_line(interrupt: BaseException, job: JobContext | None) -> str:
    """The one line Ctrl-C prints, for what was interrupted: the start (imports, config), a job, or a sweep."""
    head = "softprompt: interrupted (Ctrl-C)"
    if job is None:
        return f"{head} while starting, before any job ran; nothing to resume: run the command again"
    known = isinstance(interrupt, Interrupted)
    what = interrupt.what if known else None
    run_dir = interrupt.output_dir if known and interrupt.output_dir is not None else job.output_dir
    continues = _checkpoint(run_dir, interrupt.checkpoint_step if known else None, job.ckpt_path)
    if job.sweep_dir is None:
        head = f"{head} while {what or 'preparing the job'} in {job.output_dir}"
        if continues is None:
            return f"{head}; {NO_CHECKPOINT}: rerun the same command to start it again"
        return f"{head}; to resume, rerun the same command with hydra.run.dir={job.output_dir}: it {continues}"
    resume = (f"to resume, rerun the same command with hydra.sweep.dir={job.sweep_dir} resume_sweep=true: the "
              "finished jobs are skipped")
    if job.finished:
        return f"{head} the sweep {job.sweep_dir} after job #{job.job_num}; {resume}"
    doing = f" while {what}" if what else ""
    then = continues or "starts again, as it saved no checkpoint yet"
    return f"{head} job #{job.job_num} of the sweep {job.sweep_dir}{doing}; {resume}, and job #{job.job_num} {then}"
