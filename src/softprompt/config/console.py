"""The console log handler of softprompt-train (conf/hydra/default.yaml): capture-safe."""

from __future__ import annotations

import logging
import sys
from typing import TextIO


class ConsoleHandler(logging.StreamHandler):
    """A StreamHandler that writes to whatever `sys.stdout` (or `sys.stderr`) is when a record is emitted.

    logging.StreamHandler binds the stream it was made with. A run inside a capture (pytest's capsys, a notebook
    cell, runpy) then leaves the root logger holding that capture's stream after it closed, and every later
    record in the process prints "--- Logging error ---" instead. Looking the stream up at emit time keeps
    configuring logging idempotent: a second run in one process logs where the first would have."""

    def __init__(self, stream: str = "stdout") -> None:
        if stream not in ("stdout", "stderr"):
            raise ValueError(f"stream={stream!r}: allowed: stdout, stderr")
        self._stream_name = stream
        logging.Handler.__init__(self)

    @property
    def stream(self) -> TextIO:  # type: ignore[override]
        return getattr(sys, self._stream_name)

    @stream.setter
    def stream(self, _value: TextIO) -> None:
        """Ignored: the stream is looked up at emit time (StreamHandler.__init__ and setStream assign it)."""
