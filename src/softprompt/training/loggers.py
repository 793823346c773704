"""Loggers and wandb: every logger comes from config; nothing may fail for want of an API key or a network."""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hydra.utils import instantiate


def wandb_mode() -> str:
    """`WANDB_MODE` if set; otherwise online with credentials (WANDB_API_KEY or ~/.netrc), offline without."""
    if "WANDB_MODE" in os.environ:
        return os.environ["WANDB_MODE"]
    has_key = os.environ.get("WANDB_API_KEY") or (Path.home() / ".netrc").exists()
    return "online" if has_key else "offline"


def instantiate_all(group: Mapping | None) -> list[Any]:
    """Every item of a config group (loggers, callbacks) that names a `_target_`."""
    if not group:
        return []
    return [instantiate(item) for item in group.values() if item and "_target_" in item]


def prepare_wandb_env(logger_cfg: Mapping | None) -> None:
    """wandb falls back to offline mode when no key is available."""
    uses_wandb = any("Wandb" in str(item.get("_target_", "")) for item in (logger_cfg or {}).values() if item)
    if uses_wandb:
        os.environ["WANDB_MODE"] = wandb_mode()


def finish_wandb() -> None:
    """Close the wandb run so the next job of a multirun starts its own."""
    wandb = sys.modules.get("wandb")
    if wandb is not None and getattr(wandb, "run", None) is not None:
        wandb.finish()
