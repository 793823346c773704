"""softprompt: soft prompts on frozen pretrained language models."""

from __future__ import annotations

from typing import TYPE_CHECKING

from softprompt.resolvers import register as _register_resolvers

if TYPE_CHECKING:
    from os import PathLike

    import torch

    from softprompt.artifacts import Predictor

__version__ = "0.1.0"
__all__ = ["load"]
_register_resolvers()


def load(path: str | PathLike, force: bool = False, cache_dir: str | PathLike | None = None,
         device: str | torch.device = "cpu") -> Predictor:
    """A trained prompt (a run's `prompt/` folder) as a `softprompt.artifacts.Predictor`; see
    `softprompt.artifacts.load`. Imported on first use, so `import softprompt` stays light."""
    from softprompt.artifacts import load as load_artifact

    return load_artifact(path, force=force, cache_dir=cache_dir, device=device)
