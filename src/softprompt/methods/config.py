"""Typed method configs: each method class names its `Config`, parsed once from the `method` group.

Every value comes from `conf/method/*.yaml` (or the command line); the dataclasses only say what is
allowed. A method adds its own fields by subclassing one of these.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from softprompt.config.typed import above, at_least, below
from softprompt.errors import ConfigError
from softprompt.methods.init import ARTIFACT_INIT, INIT_VALUES


@dataclass(frozen=True)
class MethodConfig:
    """What every method has: its name, where virtual tokens go in the template, its preset learning rate,
    and in-context demonstrations (`num_demonstrations` solved training examples before the query)."""

    name: str
    slots: Literal["front", "template", "none"]
    lr: float | None = field(metadata=above(0.0))
    num_virtual_tokens: int = field(metadata=at_least(0))
    init: str | None
    num_demonstrations: int = field(metadata=at_least(0))
    demonstration_separator: str

    def validate(self) -> None:
        """Cross-field rules; a subclass extends them."""


@dataclass(frozen=True)
class PromptConfig(MethodConfig):
    """Methods with trainable prompt tensors: their length, learning rate and initialisation
    (Lester et al. 2021, section 3; `from_artifact` starts from a trained prompt's folded tensors)."""

    lr: float = field(metadata=above(0.0))
    num_virtual_tokens: int = field(metadata=at_least(1))
    init: str
    init_range: float = field(metadata=above(0.0))
    init_std: float | None = field(metadata=above(0.0))
    init_vocab_size: int = field(metadata=at_least(1))
    init_text: str | None
    init_artifact: str | None

    def validate(self) -> None:
        super().validate()
        if self.init not in INIT_VALUES:
            raise ConfigError("method.init", self.init, f"allowed: {', '.join(INIT_VALUES)}")
        if self.init == "text" and not self.init_text:
            raise ConfigError("method.init_text", self.init_text, "init=text needs a non-empty text")
        if self.init == ARTIFACT_INIT and not self.init_artifact:
            raise ConfigError("method.init_artifact", self.init_artifact, f"init={ARTIFACT_INIT} needs the path of "
                              "a trained prompt (a run's prompt/ folder)")
        if self.init != ARTIFACT_INIT and self.init_artifact is not None:
            raise ConfigError("method.init_artifact", self.init_artifact,
                              f"is only read with method.init={ARTIFACT_INIT}; set method.init_artifact=null")


@dataclass(frozen=True)
class InputPromptConfig(PromptConfig):
    """Input-level prompts: slots at the front or anywhere in `template`, optionally through an encoder."""

    slots: Literal["front", "template"]
    template: str | None
    encoder: Literal["none", "mlp", "lstm"]
    encoder_hidden: int | None = field(metadata=at_least(1))
    encoder_dropout: float = field(metadata={**at_least(0.0), **below(1.0)})
    match_embedding_std: bool

    def validate(self) -> None:
        super().validate()
        if self.slots == "template" and not self.template:
            raise ConfigError("method.template", self.template, "slots=template needs a template with [P:n] slots")


@dataclass(frozen=True)
class PrefixConfig(PromptConfig):
    """Attention-level prefixes, trained directly or through an MLP (`reparam`)."""

    slots: Literal["none"]
    reparam: Literal["mlp", "none"]
    reparam_hidden: int = field(metadata=at_least(1))
    zero_init: bool


@dataclass(frozen=True)
class NoPromptConfig(MethodConfig):
    """Methods with nothing to train (the hard-prompt baseline)."""

    slots: Literal["none"]

    def validate(self) -> None:
        super().validate()
        for key, value in (("num_virtual_tokens", self.num_virtual_tokens), ("init", self.init), ("lr", self.lr)):
            if value:
                raise ConfigError(f"method.{key}", value, f"{self.name} has no trainable tensors; use null (or 0)")
