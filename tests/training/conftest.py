"""Fixtures of the training tests."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

HERE = Path(__file__).parent  # kill_callback.py: crashes and callbacks a training process imports


@pytest.fixture
def train(softprompt_train):
    """`train(args, cwd)`: softprompt-train in a process that can import kill_callback."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])}
    return lambda args, cwd: softprompt_train(*args, cwd=cwd, env=env)
