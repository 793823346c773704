"""Fixtures of the data tests."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from softprompt.data.task import TaskConfig


@pytest.fixture(scope="session")
def task_config() -> Callable[..., TaskConfig]:
    """`task_config(**task)`: a typed task config for tests that build DataModules directly: the given keys, plus
    what a classification (or, with type=generation, a generation) task needs and the test does not care about."""

    def _task(**task) -> TaskConfig:
        from softprompt.data.task import parse_task

        generation = task.get("type") == "generation"
        filled = {"name": "local", "type": "classification", "metric": "rougeL" if generation else "acc",
                  "loss": "lm" if generation else "verbalizer",
                  "prompt_init": "vocab" if generation else "class_labels",
                  "splits": {"train": "train", "validation": "validation", "test": "test"}, **task}
        if generation:
            filled.setdefault("generation", {"max_new_tokens": 8, "num_beams": 1})
            filled.setdefault("references", "single")
        return parse_task(filled)

    return _task
