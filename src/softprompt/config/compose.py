"""Locate the Hydra config tree: packaged copy in a wheel, or the repository's conf/ in a checkout."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from omegaconf import DictConfig

CONF_ENV = "SOFTPROMPT_CONF"


def config_dir() -> str:
    if os.environ.get(CONF_ENV):
        return str(Path(os.environ[CONF_ENV]).resolve())
    package = Path(__file__).resolve().parents[1]
    packaged = package / "conf"  # a wheel carries the tree inside the package
    if packaged.is_dir():
        return str(packaged)
    return str(package.parents[1] / "conf")  # a checkout: src/softprompt/ -> the repository's conf/


def compose_train(overrides: Sequence[str], return_hydra_config: bool = False) -> DictConfig:
    """The `train` config with `overrides`, composed outside a Hydra app (the CLI tools that build a job)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
            return compose("train", overrides=list(overrides), return_hydra_config=return_hydra_config)
    finally:
        GlobalHydra.instance().clear()
