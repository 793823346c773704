"""Which wandb mode to use: nothing may fail for want of an API key or a network."""

from __future__ import annotations

import os
from pathlib import Path


def wandb_mode() -> str:
    """`WANDB_MODE` if set; otherwise online with credentials (WANDB_API_KEY or ~/.netrc), offline without."""
    if "WANDB_MODE" in os.environ:
        return os.environ["WANDB_MODE"]
    has_key = os.environ.get("WANDB_API_KEY") or (Path.home() / ".netrc").exists()
    return "online" if has_key else "offline"
