"""Locate the Hydra config tree: packaged copy in a wheel, or the repository's conf/ in a checkout."""

from __future__ import annotations

import os
from pathlib import Path

CONF_ENV = "SOFTPROMPT_CONF"


def config_dir() -> str:
    if os.environ.get(CONF_ENV):
        return str(Path(os.environ[CONF_ENV]).resolve())
    packaged = Path(__file__).resolve().parent / "conf"
    if packaged.is_dir():
        return str(packaged)
    return str(Path(__file__).resolve().parents[2] / "conf")
