"""Callbacks that kill -9 their own process: at a given training step (the resume tests' crash; `rank` picks one
DDP worker), or in the middle of writing a given file (the fault tests)."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import lightning as L


class KillAtStep(L.Callback):
    def __init__(self, step: int, rank: int | None = None) -> None:
        self.step, self.rank = step, rank

    def on_train_batch_end(self, trainer: L.Trainer, *args: object) -> None:
        if trainer.global_step == self.step and self.rank in (None, trainer.global_rank):
            os.kill(os.getpid(), signal.SIGKILL)


class KillDuringWrite(L.Callback):
    """The `occurrence`-th write of a file named `file` stops half way: half its bytes are on disk when the process
    is killed. Every atomic write of the package ends in `softprompt.config.atomic._commit`, patched here."""

    def __init__(self, file: str, occurrence: int = 1) -> None:
        from softprompt.config import atomic

        original, seen = atomic._commit, []

        def commit(temporary: Path, path: Path) -> None:
            if path.name == file:
                seen.append(path)
                if len(seen) == occurrence:
                    os.truncate(temporary, temporary.stat().st_size // 2)
                    os.kill(os.getpid(), signal.SIGKILL)
            original(temporary, path)

        atomic._commit = commit
