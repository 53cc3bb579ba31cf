"""Reward functions named by the user as `module:function` or `path/to/file.py:function`.

A reward function follows TRL's convention: `fn(completions: list[str], **fields) -> list[float]`,
where each field (e.g. `answer=[...]`, `prompts=[...]`) is a list with one entry per completion.
`score` calls it by keyword (`completions=...`) and turns every way it can misbehave into a
one-line `UserError` naming the function: it raised, returned something that is not a list of the
right length, or returned a value that is not a finite real number (bools count as 0 / 1).
Messages name a loaded function by the spec the user wrote (`rewards.py:correct`), never by the
internal module a `file.py` is imported as (`reward_name`).

Left out: async reward functions, reward models served over HTTP, per-function weights.
"""

from __future__ import annotations

import importlib
import importlib.util
import math
import numbers
import re
import sys
from pathlib import Path
from typing import Callable

from fastrlhf.errors import UserError

RewardFn = Callable[..., list[float]]
_FILE_MODULE_PREFIX = "fastrlhf_user_reward_"
_SPECS: dict[int, tuple[object, str]] = {}  # id(fn) -> (fn, the spec it was loaded from); fn kept alive so ids stay unique


def load_reward(spec: str) -> RewardFn:
    """The callable named by `spec` ("package.module:function" or "dir/file.py:function")."""
    target, sep, attribute = spec.rpartition(":")
    if not sep or not target or not attribute:
        raise UserError(f"reward '{spec}': expected 'module:function' or 'path/to/file.py:function'")
    module = _import_file(spec, target) if target.endswith(".py") else _import_module(spec, target)
    fn = module
    for part in attribute.split("."):
        if not hasattr(fn, part):
            raise UserError(f"reward '{spec}': '{target}' has no attribute '{attribute}'")
        fn = getattr(fn, part)
    if not callable(fn):
        raise UserError(f"reward '{spec}': '{attribute}' is not callable ({type(fn).__name__})")
    _SPECS[id(fn)] = (fn, spec)
    return fn


def _import_module(spec: str, name: str):
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name and (name == exc.name or name.startswith(exc.name + ".")):
            raise UserError(f"reward '{spec}': no module named '{exc.name}'") from None
        raise UserError(f"reward '{spec}': importing '{name}' failed: {_one_line(exc)}") from None
    except Exception as exc:  # the user's module raised while importing
        raise UserError(f"reward '{spec}': importing '{name}' failed: {_one_line(exc)}") from None


def _import_file(spec: str, file_name: str):
    path = Path(file_name)
    if not path.is_file():
        raise UserError(f"reward '{spec}': file '{path}' not found")
    module_name = f"{_FILE_MODULE_PREFIX}{abs(hash(str(path.resolve())))}"
    module_spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[module_name] = module  # lets dataclasses / pickling inside the file work
    try:
        module_spec.loader.exec_module(module)
    except Exception as exc:
        message = _one_line(exc)
        del sys.modules[module_name]
        raise UserError(f"reward '{spec}': importing '{path}' failed: {message}") from None
    return module


def reward_name(fn: RewardFn) -> str:
    """How messages name a reward function: the spec it was loaded from by `load_reward` (what the user
    wrote, e.g. `my_rewards.py:correct`), else `module:qualname` (a user file's module by its path)."""
    loaded = _SPECS.get(id(fn))
    if loaded is not None and loaded[0] is fn:
        return loaded[1]
    module = getattr(fn, "__module__", None) or "?"
    name = getattr(fn, "__qualname__", None) or type(fn).__name__
    if isinstance(module, str) and module.startswith(_FILE_MODULE_PREFIX):
        module = getattr(sys.modules.get(module), "__file__", None) or module
    return f"{module}:{name}"


def score(fn: RewardFn, completions: list[str], fields: dict[str, list]) -> list[float]:
    """`fn(completions=completions, **fields)` checked: a list of len(completions) finite floats.

    `fields` are per-completion lists; a field of the wrong length is a caller bug (ValueError).
    """
    for key, values in fields.items():
        if len(values) != len(completions):
            raise ValueError(f"field '{key}' has {len(values)} rows for {len(completions)} completions")
    name = reward_name(fn)
    try:
        result = fn(completions=completions, **fields)
    except Exception as exc:
        raise UserError(f"reward function '{name}' raised {_one_line(exc)}") from None
    return _check_rewards(name, result, len(completions))


def _check_rewards(name: str, result, expected_length: int) -> list[float]:
    if isinstance(result, (str, bytes, dict)) or not hasattr(result, "__len__"):
        raise UserError(f"reward function '{name}' must return a list of floats, "
                        f"got {type(result).__name__}")
    if len(result) != expected_length:
        raise UserError(f"reward function '{name}' returned {len(result)} rewards "
                        f"for {expected_length} completions")
    rewards = []
    for index, value in enumerate(result):
        if hasattr(value, "item") and getattr(value, "ndim", 0) == 0:
            value = value.item()  # numpy / torch scalars
        if not isinstance(value, numbers.Real) or not math.isfinite(value):
            raise UserError(f"reward function '{name}' returned {value!r} at index {index}; "
                            "rewards must be finite numbers")
        rewards.append(float(value))
    return rewards


def _one_line(exc: BaseException) -> str:
    text = _user_names(" ".join(str(exc).split()))
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _user_names(text: str) -> str:
    """`text` with the internal module name of an imported `file.py` replaced by the file's path."""
    def path_of(match: re.Match) -> str:
        return getattr(sys.modules.get(match.group(0)), "__file__", None) or match.group(0)
    return re.sub(rf"{_FILE_MODULE_PREFIX}\d+", path_of, text)
