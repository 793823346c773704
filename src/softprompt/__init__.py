"""softprompt: soft prompts on frozen pretrained language models."""

from __future__ import annotations

from typing import TYPE_CHECKING

from softprompt.config.library_notices import quiet_library_notices as _quiet_library_notices
from softprompt.config.resolvers import register as _register_resolvers

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from os import PathLike

    import torch

    from softprompt.artifacts.mixed import MixedPredictor
    from softprompt.artifacts.predictor import Predictor

__version__ = "0.1.0"
__all__ = ["load", "load_many"]
_register_resolvers()
_quiet_library_notices()


def load(path: str | PathLike, force: bool = False, cache_dir: str | PathLike | None = None,
         device: str | torch.device = "cpu", task: str | None = None, quantization: str | None = None) -> Predictor:
    """A trained prompt (a run's `prompt/` folder) as a `softprompt.artifacts.predictor.Predictor`; see
    `softprompt.artifacts.predictor.load` (`task`: which task of a task mixture to predict for; `quantization`: another
    `backbone.quantization` than the prompt was trained on). Imported on
    first use, so `import softprompt` stays light."""
    from softprompt.artifacts.predictor import load as load_artifact

    return load_artifact(path, force=force, cache_dir=cache_dir, device=device, task=task, quantization=quantization)


def load_many(paths: Sequence[str | PathLike] | Mapping[str, str | PathLike], force: bool = False,
              cache_dir: str | PathLike | None = None, device: str | torch.device = "cpu",
              batch_size: int | None = None) -> MixedPredictor:
    """Several trained prompts on one frozen backbone, each input row with its own prompt (a list of paths,
    named by index, or {name: path}); see `softprompt.artifacts.mixed.load_many`."""
    from softprompt.artifacts.mixed import load_many as load_mixed

    return load_mixed(paths, force=force, cache_dir=cache_dir, device=device, batch_size=batch_size)
