"""Methods: sibling LightningModules sharing one base."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from hydra.utils import get_class

from softprompt.backbones import Backbone
from softprompt.errors import ConfigError
from softprompt.methods.base import SoftPromptModule
from softprompt.methods.init import InitContext
from softprompt.methods.objectives import Objective

__all__ = ["SoftPromptModule", "build_method", "method_class"]


def method_class(method: Mapping) -> type[SoftPromptModule]:
    try:
        cls = get_class(str(method.get("_target_")))
    except Exception as error:  # hydra wraps import errors in several types
        raise ConfigError("method._target_", method.get("_target_"), f"not importable ({error})") from None
    if not (isinstance(cls, type) and issubclass(cls, SoftPromptModule)):
        raise ConfigError("method._target_", method.get("_target_"), "must be a SoftPromptModule subclass")
    return cls


def build_method(method: Mapping, *, backbone: Backbone, objective: Objective, optimizer: Mapping, dropout: bool,
                 init_context: Callable[[], InitContext]) -> SoftPromptModule:
    """Instantiate the method class with the shared arguments; the class reads its own keys."""
    common = {"backbone": backbone, "objective": objective, "optimizer": optimizer,
              "name": str(method["name"]), "dropout": dropout}
    return method_class(method).from_config(method, init_context, **common)
