"""Helpers of the fuzz tests (imported by name: `from fuzzing import ...`; conftest.py prints the tally).

Every fuzz test runs a fixed number of generated inputs (`fuzz_settings`: derandomized, no example
database, no deadline, so CI is deterministic) and records each outcome in `TRIED[kind]`:
"ok" (the input loaded / the command succeeded) or "error" (a clean one-line `UserError`).
"""

from __future__ import annotations

import collections

from hypothesis import HealthCheck, settings

from fastrlhf.errors import UserError

TRIED: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)


def fuzz_settings(max_examples: int):
    return settings(max_examples=max_examples, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much,
                                           HealthCheck.data_too_large, HealthCheck.large_base_example,
                                           HealthCheck.function_scoped_fixture],
                    print_blob=False)


def check_user_error(exc: BaseException, *names: str) -> str:
    """`exc` is a one-line `UserError` that mentions one of `names` (a file, a key); returns its message."""
    assert isinstance(exc, UserError), f"{type(exc).__name__} instead of a UserError: {exc!r}"
    message = str(exc)
    assert message and "\n" not in message and "\r" not in message, f"message is not one line: {message!r}"
    if names:
        assert any(name in message for name in names), f"message names none of {names}: {message!r}"
    return message


def record(kind: str, outcome: str) -> None:
    TRIED[kind][outcome] += 1
