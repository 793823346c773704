"""Errors that are reported to the user as one line, without a traceback."""


class SoftPromptError(Exception):
    """Base class: the message is a complete, user-facing sentence."""


class ConfigError(SoftPromptError):
    """A config value is invalid. Raised before any compute."""

    def __init__(self, key: str, value: object, allowed: str) -> None:
        if isinstance(value, str):
            value = str(value)  # a string enum (a backbone family) reads as the string a config holds
        self.key, self.value, self.allowed = key, value, allowed
        super().__init__(f"{key}={value!r} is invalid: {allowed}")


class AssetError(SoftPromptError):
    """An offline asset could not be obtained or verified."""


class BackboneModifiedError(SoftPromptError):
    """The frozen backbone's weights changed during a run."""


def require_positive_int(key: str, value: object) -> int:
    """`value` as an int >= 1, or a ConfigError naming `key`."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(key, value, "must be an integer >= 1")
    return value
