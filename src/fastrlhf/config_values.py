"""Typed values for the config tree: field declarations, range checks and type conversion.

`option(default, help, check)` declares a config field; the `check`s here return a problem text or
None. `convert(value, annotation, key, source)` turns a YAML / override value into the field's type
(bool / int / float / str / Literal / optional / list) or raises a one-line `UserError` naming the key.
Kept apart from `config.py` so that file holds only the sections and the loading API.
"""

from __future__ import annotations

import math
import types
import typing
from dataclasses import field
from typing import Any, Callable, Literal

from fastrlhf.errors import UserError

YAML_BOOL_WORDS = {False: ("off", "false", "no"), True: ("on", "true", "yes")}
Check = Callable[[Any], "str | None"]  # returns a problem description, or None when fine


# ---------------------------------------------------------------------------- range checks
def at_least(low: float) -> Check:
    return lambda value: None if value >= low else f"must be >= {low}"


def greater_than(low: float) -> Check:
    return lambda value: None if value > low else f"must be > {low}"


def in_unit_interval(value: float) -> str | None:  # (0, 1]
    return None if 0.0 < value <= 1.0 else "must be in (0, 1]"


def non_empty(value: str) -> str | None:
    return None if value.strip() else "must not be empty"


def positive_list(value: list) -> str | None:
    return None if value and all(v >= 1 for v in value) else "must be a non-empty list of ints >= 1"


MAX_DIGITS = 18  # the built-in arithmetic tasks' largest operand size (tasks/arithmetic.py)


def digit_counts(value: list) -> str | None:
    ok = value and all(1 <= v <= MAX_DIGITS for v in value)
    return None if ok else f"must be a non-empty list of ints in 1..{MAX_DIGITS}"


def option(default: Any, help: str, check: Check | None = None, factory=None):
    """A dataclass field with a help text and an optional range check."""
    metadata = {"help": help, "check": check}
    if factory is not None:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)



# ---------------------------------------------------------------------------- conversion
def convert(value: Any, annotation: Any, key: str, source: str) -> Any:
    """`value` as an instance of `annotation`, or a UserError naming `key`."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [arg for arg in args if arg is not type(None)]
        return convert(value, inner, key, source)
    if origin is Literal:
        if value in args and not isinstance(value, bool):
            return value
        if isinstance(value, bool):  # YAML 1.1 reads off / on / no / yes as booleans
            spelled = [arg for arg in args if isinstance(arg, str) and arg in YAML_BOOL_WORDS[value]]
            if spelled:
                return spelled[0]
        choices = ", ".join(repr(arg) for arg in args)
        raise UserError(f"{source}: '{key}' must be one of {choices}, got {value!r}")
    if origin is list:
        if not isinstance(value, list):
            raise type_error(source, key, "a list", value)
        return [convert(item, args[0], f"{key}[{i}]", source) for i, item in enumerate(value)]
    return _convert_scalar(value, annotation, key, source)


def _convert_scalar(value: Any, annotation: type, key: str, source: str) -> Any:
    if annotation is bool:
        if isinstance(value, bool):
            return value
        raise type_error(source, key, "true or false", value)
    if annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise type_error(source, key, "an integer", value)
    if annotation is float:
        number = _as_float(value)
        if number is None:
            raise type_error(source, key, "a number", value)
        if not math.isfinite(number):
            raise UserError(f"{source}: '{key}' must be a finite number, got {value!r}")
        return number
    if annotation is str:
        if isinstance(value, str):
            return value
        raise type_error(source, key, "a string", value)
    raise TypeError(f"config field '{key}' has an unsupported type {annotation!r}")


def _as_float(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        try:
            return float(value)
        except OverflowError:  # an int beyond the float range: reported as not finite
            return math.inf if value > 0 else -math.inf
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


def type_error(source: str, key: str, expected: str, value: Any) -> UserError:
    return UserError(f"{source}: '{key}' must be {expected}, got {value!r} ({type_name(value)})")


def type_name(value: Any) -> str:
    names = {dict: "mapping", list: "list", str: "string", bool: "boolean", type(None): "null"}
    return names.get(type(value), type(value).__name__)
