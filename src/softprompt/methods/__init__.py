"""Methods: sibling LightningModules sharing one base."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from hydra.utils import get_class
from omegaconf import OmegaConf

from softprompt.backbones import Backbone
from softprompt.config.compose import config_dir
from softprompt.errors import ConfigError
from softprompt.methods.base import SoftPromptModule
from softprompt.methods.config import MethodConfig
from softprompt.methods.init import InitContext
from softprompt.objectives import Objective

__all__ = ["MethodConfig", "SoftPromptModule", "build_method", "method_class", "method_config",
           "preset_classes"]


def method_class(method: Mapping) -> type[SoftPromptModule]:
    try:
        cls = get_class(str(method.get("_target_")))
    except Exception as error:  # hydra wraps import errors in several types
        raise ConfigError("method._target_", method.get("_target_"), f"not importable ({error})") from None
    if not (isinstance(cls, type) and issubclass(cls, SoftPromptModule)):
        raise ConfigError("method._target_", method.get("_target_"), "must be a SoftPromptModule subclass")
    return cls


def method_config(method: Mapping) -> MethodConfig:
    """The `method` group parsed by its class's typed Config (one line per problem, before anything loads)."""
    return method_class(method).parse_config(method)


def build_method(method: MethodConfig | Mapping, *, backbone: Backbone, objective: Objective, optimizer: Mapping,
                 dropout: bool, init_context: Callable[[], InitContext],
                 initial_state: Mapping[str, torch.Tensor] | None = None,
                 cls: type[SoftPromptModule] | None = None) -> SoftPromptModule:
    """Instantiate the method class `cls` from its parsed config (or the `method` group, parsed here) with the
    shared arguments. `initial_state`: a trained prompt's folded tensors to start from (init=from_artifact)."""
    if isinstance(method, MethodConfig):
        if cls is None:
            raise TypeError("build_method: a parsed MethodConfig needs its method class (cls=)")
        config = method
    else:
        cls = method_class(method)
        config = cls.parse_config(method)
    common = {"backbone": backbone, "objective": objective, "optimizer": optimizer, "name": config.name,
              "dropout": dropout}
    return cls.from_config(config, init_context, initial_state, **common)


def preset_classes() -> dict[str, type[SoftPromptModule]]:
    """The method class of every preset in conf/method/, by preset name (a preset without `_target_` takes its
    parent's, as Hydra composes it)."""
    folder = Path(config_dir()) / "method"
    raw = {path.stem: OmegaConf.to_container(OmegaConf.load(path)) for path in sorted(folder.glob("*.yaml"))}

    def target(name: str) -> str | None:
        preset = raw[name]
        parents = [d for d in preset.get("defaults") or [] if isinstance(d, str) and d != "_self_"]
        return preset.get("_target_") or next((target(p) for p in parents if p in raw), None)

    return {name: method_class({"_target_": target(name)}) for name in raw}
