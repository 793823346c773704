"""Ctrl-C from inside a training process: a callback that sends SIGINT to its own process at a given training step
(as a terminal does to the foreground process), imported by the training processes of test_interrupt.py."""

from __future__ import annotations

import os
import signal

import lightning as L


class InterruptAtStep(L.Callback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer: L.Trainer, *args: object) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGINT)
