"""Reward loading from module:function / file.py:function, and checked scoring."""

import sys

import numpy as np
import pytest

from fastrlhf.errors import UserError
from fastrlhf.tasks import arithmetic
from fastrlhf.tasks.rewards import load_reward, score


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    """A `user_rewards` module on sys.path; yields the file path."""
    path = tmp_path / "user_rewards.py"
    path.write_text(
        "import math\n"
        "LIMIT = 3\n"
        "def length_reward(completions, **fields):\n"
        "    return [float(len(c)) for c in completions]\n"
        "def echo_field(completions, bonus, **fields):\n"
        "    return [b for b in bonus]\n"
        "def raises(completions, **fields):\n"
        "    raise KeyError('answer')\n"
        "def too_short(completions, **fields):\n"
        "    return [1.0]\n"
        "def nan_reward(completions, **fields):\n"
        "    return [math.nan for _ in completions]\n"
        "def none_reward(completions, **fields):\n"
        "    return [None for _ in completions]\n"
        "def text_reward(completions, **fields):\n"
        "    return 'good'\n"
        "def numpy_reward(completions, **fields):\n"
        "    import numpy\n"
        "    return numpy.ones(len(completions), dtype=numpy.float32)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    yield path
    sys.modules.pop("user_rewards", None)


def load_error(spec):
    with pytest.raises(UserError) as info:
        load_reward(spec)
    assert "\n" not in str(info.value)
    return str(info.value)


def test_load_by_module_and_by_file(user_module):
    assert load_reward("fastrlhf.tasks.arithmetic:reward") is arithmetic.reward
    by_module = load_reward("user_rewards:length_reward")
    by_file = load_reward(f"{user_module}:length_reward")
    assert by_module(["ab", "c"]) == by_file(["ab", "c"]) == [2.0, 1.0]


def test_file_path_with_a_colon_splits_at_the_last_colon(user_module, tmp_path):
    folder = tmp_path / "v1:final"
    folder.mkdir()
    path = folder / "scores.py"
    path.write_text("def constant(completions, **fields):\n    return [0.5] * len(completions)\n")
    assert load_reward(f"{path}:constant")(["a"]) == [0.5]


@pytest.mark.parametrize("spec, expected", [
    ("user_rewards", "expected 'module:function' or 'path/to/file.py:function'"),
    ("user_rewards:", "expected 'module:function'"),
    ("no_such_module_xyz:f", "no module named 'no_such_module_xyz'"),
    ("user_rewards:missing", "'user_rewards' has no attribute 'missing'"),
    ("user_rewards:LIMIT", "'LIMIT' is not callable (int)"),
    ("does/not/exist.py:f", "file 'does/not/exist.py' not found"),
])
def test_load_errors(user_module, spec, expected):
    message = load_error(spec)
    assert message.startswith(f"reward '{spec}': ") and expected in message


def test_import_failures_inside_the_user_module(tmp_path, monkeypatch):
    (tmp_path / "broken_import.py").write_text("import not_installed_pkg_xyz\n")
    (tmp_path / "broken_code.py").write_text("x = 1 / 0\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert ("importing 'broken_import' failed: ModuleNotFoundError: "
            "No module named 'not_installed_pkg_xyz'") in load_error("broken_import:f")
    assert "ZeroDivisionError: division by zero" in load_error(f"{tmp_path}/broken_code.py:f")
    for name in ("broken_import", "broken_code"):
        sys.modules.pop(name, None)


def test_score_passes_fields_and_returns_floats(user_module):
    fn = load_reward("user_rewards:echo_field")
    assert score(fn, ["a", "b"], {"bonus": [1, True]}) == [1.0, 1.0]
    assert score(arithmetic.reward, ["3", "5"], {"answer": ["3", "4"]}) == [1.0, 0.0]
    rewards = score(load_reward("user_rewards:numpy_reward"), ["a", "b"], {})
    assert rewards == [1.0, 1.0] and all(type(r) is float for r in rewards)


@pytest.mark.parametrize("name, expected", [
    ("raises", "reward function 'user_rewards:raises' raised KeyError: 'answer'"),
    ("too_short", "reward function 'user_rewards:too_short' returned 1 rewards for 2 completions"),
    ("nan_reward", "returned nan at index 0; rewards must be finite numbers"),
    ("none_reward", "returned None at index 0"),
    ("text_reward", "must return a list of floats, got str"),
])
def test_score_errors_name_the_function(user_module, name, expected):
    with pytest.raises(UserError) as info:
        score(load_reward(f"user_rewards:{name}"), ["a", "b"], {})
    assert expected in str(info.value) and "\n" not in str(info.value)


def test_missing_field_is_reported_as_a_user_error():
    with pytest.raises(UserError, match="arithmetic:reward' raised TypeError"):
        score(arithmetic.reward, ["1"], {})  # the data has no "answer" field


def test_field_length_mismatch_is_a_caller_bug():
    with pytest.raises(ValueError):
        score(arithmetic.reward, ["1", "2"], {"answer": ["1"]})


def test_messages_about_a_file_reward_name_the_users_spec(tmp_path):
    """Used to name the internal module: "reward function 'fastrlhf_user_reward_<digits>:fn' raised ..."."""
    path = tmp_path / "my_rewards.py"
    path.write_text("import sys\n"
                    "def raises(completions, **fields):\n"
                    "    raise ValueError('bad answer in ' + __name__)\n"
                    "def short(completions, **fields):\n"
                    "    return [1.0]\n"
                    "def nan(completions, **fields):\n"
                    "    return [float('nan')] * len(completions)\n"
                    "def text(completions, **fields):\n"
                    "    return 'x'\n")
    for name, problem in [("raises", "raised ValueError: bad answer in"), ("short", "returned 1 rewards for 2"),
                          ("nan", "returned nan at index 0"), ("text", "must return a list of floats")]:
        spec = f"{path}:{name}"
        with pytest.raises(UserError) as info:
            score(load_reward(spec), ["a", "b"], {})
        message = str(info.value)
        assert message.startswith(f"reward function '{spec}' ") and problem in message, message
        assert "fastrlhf_user_reward" not in message and "\n" not in message
