"""Methods: sibling LightningModules sharing one base."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from hydra.utils import get_class

from softprompt.backbones import Backbone
from softprompt.errors import ConfigError
from softprompt.methods.base import SoftPromptModule
from softprompt.methods.init import InitContext
from softprompt.methods.input_level import InputLevelPrompt

__all__ = ["InputLevelPrompt", "SoftPromptModule", "build_method"]


def build_method(method: Mapping, *, backbone: Backbone, label_token_ids: Sequence[Sequence[Sequence[int]]],
                 optimizer: Mapping, dropout: bool, init_context: Callable[[], InitContext]) -> SoftPromptModule:
    """Instantiate `method._target_` with the shared arguments plus its own."""
    try:
        cls = get_class(str(method["_target_"]))
    except Exception as error:  # hydra wraps import errors in several types
        raise ConfigError("method._target_", method["_target_"], f"not importable ({error})") from None
    if not issubclass(cls, SoftPromptModule):
        raise ConfigError("method._target_", method["_target_"], "must be a SoftPromptModule subclass")
    common = {"backbone": backbone, "label_token_ids": label_token_ids, "optimizer": optimizer,
              "name": str(method["name"]), "dropout": dropout}
    if issubclass(cls, InputLevelPrompt):
        return cls(num_virtual_tokens=int(method["num_virtual_tokens"]), init=str(method["init"]),
                   init_context=init_context(), **common)
    return cls(**common)
