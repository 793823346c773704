"""Methods: plain `nn.Module`s sharing one contract (`base.SoftPromptMethod`); `training.module` trains them."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from hydra.utils import get_class
from omegaconf import OmegaConf

from softprompt.backbones import Backbone
from softprompt.config.compose import config_dir
from softprompt.errors import ConfigError
from softprompt.methods.base import METHODS, SoftPromptMethod
from softprompt.methods.config import MethodConfig
from softprompt.methods.init import ARTIFACT_INIT, InitContext
from softprompt.objectives import Objective

__all__ = ["MethodConfig", "SoftPromptMethod", "build_method", "method_class", "method_config", "preset_classes"]

# Where the first four methods lived before each method had its module: artifacts and checkpoints written then
# name these targets; the method's preset (by `name`) says where it lives now.
MOVED_MODULES = ("softprompt.methods.input_level.", "softprompt.methods.attention_level.")


def method_class(method: Mapping) -> type[SoftPromptMethod]:
    target = str(method.get("_target_"))
    if target.startswith(MOVED_MODULES) and method.get("name") in preset_targets():
        target = str(preset_targets()[method.get("name")])
    try:
        cls = get_class(target)
    except Exception as error:  # hydra wraps import errors in several types
        raise ConfigError("method._target_", method.get("_target_"), f"not importable ({error})") from None
    if not (isinstance(cls, type) and issubclass(cls, SoftPromptMethod)):
        raise ConfigError("method._target_", method.get("_target_"), "must be a SoftPromptMethod subclass")
    return cls


def method_config(method: Mapping) -> MethodConfig:
    """The `method` group parsed by its class's typed Config (one line per problem, before anything loads)."""
    return method_class(method).parse_config(method)


def build_method(config: MethodConfig, *, backbone: Backbone, objective: Objective, dropout: bool,
                 init_context: Callable[[], InitContext],
                 initial_state: Mapping[str, torch.Tensor] | None = None) -> SoftPromptMethod:
    """The method of the parsed `config` (its class is the one whose Config it is). `init_context` is called only
    when the method draws an init; `initial_state`: a trained prompt's folded tensors, which init=from_artifact
    continues and a source init (the class's `artifact_inits`) starts from."""
    cls = METHODS[type(config)]
    common = {"backbone": backbone, "objective": objective, "dropout": dropout}
    if initial_state is not None and config.init == ARTIFACT_INIT:
        return cls.folded(config, tensors=initial_state, **common)
    source = {"source": initial_state} if initial_state is not None else {}
    return cls(config, init_context=init_context() if config.init is not None else None, **source, **common)


def preset_targets() -> dict[str, str | None]:
    """The `_target_` of every preset in conf/method/, by preset name (a preset without `_target_` takes its
    parent's, as Hydra composes it)."""
    folder = Path(config_dir()) / "method"
    raw = {path.stem: OmegaConf.to_container(OmegaConf.load(path)) for path in sorted(folder.glob("*.yaml"))}

    def target(name: str) -> str | None:
        preset = raw[name]
        parents = [d for d in preset.get("defaults") or [] if isinstance(d, str) and d != "_self_"]
        return preset.get("_target_") or next((target(p) for p in parents if p in raw), None)

    return {name: target(name) for name in raw}


def preset_classes() -> dict[str, type[SoftPromptMethod]]:
    """The method class of every preset in conf/method/, by preset name."""
    return {name: method_class({"_target_": target}) for name, target in preset_targets().items()}
