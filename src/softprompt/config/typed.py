"""Typed configs: a frozen dataclass is the schema of a config group, parsed once from the composed config.

Every field is required (its value lives in `conf/`, never in code); its annotation says what is allowed
(`int`, `float`, `bool`, `str`, `Literal[...]`, `X | None`, `list[str]`, `Mapping`, `Any`), and `field`
metadata adds bounds (`at_least(1)`, `above(0.0)`, `below(1.0)`). A value of the wrong kind, a missing key
or an unknown key is one ConfigError naming the key, the value and what is allowed. Cross-field rules live
in the dataclass's `validate()`.
"""

from __future__ import annotations

import dataclasses
import math
import types
from collections.abc import Mapping
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

from softprompt.errors import ConfigError

Schema = TypeVar("Schema")
IGNORED = ("_target_",)  # Hydra's instantiation key, not a setting


def at_least(minimum: float) -> dict[str, Any]:
    return {"at_least": minimum}


def above(minimum: float) -> dict[str, Any]:
    return {"above": minimum}


def below(maximum: float) -> dict[str, Any]:
    return {"below": maximum}


def bounded(**bounds: float) -> dict[str, Any]:
    """Several bounds at once: bounded(at_least=0.0, below=1.0)."""
    return dict(bounds)


def _describe(annotation: Any, meta: Mapping[str, Any]) -> str:
    """What a value of this annotation may be, in words."""
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Literal:
        return "allowed: " + ", ".join(str(a) for a in args)
    if origin in (Union, types.UnionType):
        inner = next(a for a in args if a is not type(None))
        return f"{_describe(inner, meta)} (or null)"
    kinds = {int: "an integer", float: "a finite number", bool: "true or false", str: "a string",
             list: "a list", dict: "a mapping", Mapping: "a mapping"}
    kind = kinds.get(origin or annotation, str(annotation))
    bounds = [f"{word} {meta[key]:g}" for key, word in (("at_least", ">="), ("above", ">"), ("below", "<"))
              if key in meta]
    return f"must be {kind}" + (" " + " and ".join(bounds) if bounds else "")


def _fits(annotation: Any, value: Any, meta: Mapping[str, Any]) -> bool:
    origin, args = get_origin(annotation), get_args(annotation)
    if annotation is Any:
        return True
    if origin is Literal:
        return any(value == allowed and type(value) is type(allowed) for allowed in args)
    if origin in (Union, types.UnionType):
        return any(_fits(a, value, meta) for a in args) if value is not None else type(None) in args
    if annotation is type(None):
        return value is None
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool) and _in_bounds(value, meta)
    if annotation is float:
        number = isinstance(value, int | float) and not isinstance(value, bool)
        return number and math.isfinite(value) and _in_bounds(value, meta)
    if annotation is str:
        return isinstance(value, str)
    if origin is list or annotation is list:
        return isinstance(value, list | tuple) and all(_fits(args[0], v, {}) for v in value) if args else \
            isinstance(value, list | tuple)
    if origin in (Mapping, dict) or annotation in (Mapping, dict):
        return isinstance(value, Mapping)
    raise TypeError(f"unsupported config annotation {annotation!r}")


def _in_bounds(value: float, meta: Mapping[str, Any]) -> bool:
    return (value >= meta.get("at_least", -math.inf) and value > meta.get("above", -math.inf)
            and value < meta.get("below", math.inf))


def _convert(annotation: Any, value: Any) -> Any:
    """Ints where a float is expected become floats; sequences become lists (OmegaConf gives ListConfig-like)."""
    if annotation is float and isinstance(value, int):
        return float(value)
    if isinstance(value, tuple):
        return list(value)
    return value


def parse(schema: type[Schema], values: Mapping[str, Any], prefix: str, name: str | None = None) -> Schema:
    """`schema` from `values` (a config group such as `method`), every key checked; `prefix` names the group in
    errors (`method` -> `method.lr`), `name` the thing configured (for unknown keys)."""
    if not isinstance(values, Mapping):
        raise ConfigError(prefix, values, "must be a mapping of settings")
    hints = get_type_hints(schema)
    fields = {f.name: f for f in dataclasses.fields(schema)}
    for key in values:
        if key not in fields and key not in IGNORED:
            raise ConfigError(f"{prefix}.{key}", values[key], f"is not a setting of {name or prefix}; its settings: "
                              f"{', '.join(fields)}")
    parsed = {}
    for field_name, spec in fields.items():
        key = f"{prefix}.{field_name}"
        if field_name not in values:
            raise ConfigError(key, None, f"is missing: every setting of {name or prefix} is set in conf/ "
                              "(or on the command line)")
        annotation, value = hints[field_name], values[field_name]
        if not _fits(annotation, value, spec.metadata):
            raise ConfigError(key, value, _describe(annotation, spec.metadata))
        parsed[field_name] = _convert(annotation, value)
    result = schema(**parsed)
    validate = getattr(result, "validate", None)
    if callable(validate):
        validate()
    return result
