"""Shared fixtures: composed configs (as Hydra would build them) and a small local dataset."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

from softprompt.config.compose import config_dir

torch.set_num_threads(2)

POSITIVE = ["a wonderful, moving film", "great fun", "brilliant acting and a sharp script", "a joy",
            "funny and warm", "the best film this year", "superb", "lovely and smart"]
NEGATIVE = ["a dull mess", "boring", "terrible acting and a lazy script", "a chore", "flat and cold",
            "the worst film this year", "awful", "tedious and dumb"]


def write_jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.fixture(scope="session")
def local_task_files(tmp_path_factory) -> dict[str, str]:
    """A small sentiment dataset as local jsonl files (string labels, a `review` column)."""
    root = tmp_path_factory.mktemp("local_task")
    rows = [{"review": t, "sentiment": "positive"} for t in POSITIVE] + \
           [{"review": t, "sentiment": "negative"} for t in NEGATIVE]
    rows = [r for pair in zip(rows[:8], rows[8:], strict=True) for r in pair]  # interleave classes
    return {
        "train": write_jsonl(root / "train.jsonl", rows * 3),
        "validation": write_jsonl(root / "validation.jsonl", rows[:6]),
        "test": write_jsonl(root / "test.jsonl", rows[6:]),
    }


def local_task_overrides(files: dict[str, str]) -> list[str]:
    return [
        "task.name=local",
        "task.source.path=json",
        "task.source.asset=null",
        f"+task.source.data_files={{train: {files['train']}, validation: {files['validation']}, "
        f"test: {files['test']}}}",
        "task.columns={text: review, label: sentiment}",
    ]


@pytest.fixture
def make_cfg(tmp_path) -> Callable[..., DictConfig]:
    """Compose conf/train.yaml with overrides, as `softprompt-train` would, writing into tmp_path."""

    def _make(overrides: list[str] = (), output_dir: Path | None = None) -> DictConfig:
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
            cfg = compose("train", overrides=["logger=none", *overrides], return_hydra_config=True)
        out = output_dir or tmp_path / "run"
        with open_dict(cfg):
            cfg.paths.output_dir = str(out)
            cfg.paths.log_dir = str(tmp_path / "logs")
            cfg.hydra.runtime.output_dir = str(out)
        HydraConfig.instance().set_config(cfg)
        return cfg

    yield _make
    GlobalHydra.instance().clear()


TINY = ["backbone=tiny_random", "callbacks=none"]
