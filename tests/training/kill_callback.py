"""A callback that kill -9s its own process at a given training step (the resume tests' crash)."""

from __future__ import annotations

import os
import signal

import lightning as L


class KillAtStep(L.Callback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer: L.Trainer, *args: object) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)
