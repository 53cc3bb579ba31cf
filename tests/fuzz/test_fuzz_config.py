"""Fuzzing the config loader: `key=value` override strings and YAML config files.

Property: every input either gives a `Config` (whose YAML snapshot loads back to the same values,
as `--resume` needs) or a one-line `UserError` naming where it came from (the file, the command
line) — never another exception.
"""

from __future__ import annotations

import itertools
import types
import typing

import yaml
from hypothesis import given
from hypothesis import strategies as st

from fuzzing import check_user_error, fuzz_settings, record
from fastrlhf.config import Config, _field_type, all_keys, config_from_dict, load_config

KEYS = all_keys()
SECTIONS = sorted({key.split(".")[0] for key in KEYS})
FIELDS = sorted({key.split(".")[1] for key in KEYS})

# values that YAML reads in surprising ways, or that are hard on a type / range check
TRICKY_SCALARS = [
    "", " ", "~", "null", "Null", "true", "False", "off", "on", "yes", "no", "y", "0", "-1", "1", "2", "3.5",
    "1e-4", "1e400", "-1e400", "1e-400", ".inf", "-.inf", ".nan", "NaN", "0x1F", "0o17", "0b11", "1_000", "+5",
    "2024-01-01", "2001-12-14t21:59:43.10-05:00", "12:30:00", "[1, 2]", "[]", "[0]", "[1, -2]", "[true]",
    "[1.5]", "['1']", "{a: 1}", "{}", "[", "]", "{", "}", "!!python/object:os.system", "!!binary aGVsbG8=",
    "!!set {a, b}", "!!omap [a: 1]", "!!str 5", "!!int x", "!!float abc", "&a 1", "*a", "'unterminated",
    '"a\\nb"', '"\\ud800"', "a\nb", "a\rb", "- 1", "? x", "%YAML 1.1", "|\n  x", ">\n  y", "#comment",
    "a: b: c", "\t", "\x00", "\x85", "\u2028", "é", "runs/a b", "1" * 5000, "9" * 400, "[" * 600, "{a: " * 300,
    "-" * 50, "x" * 2000, "auto", "cuda", "cpu", "grpo", "ppo", "dpo", "sigmoid", "builtin", "ngram",
]


def _mutated_key(key: str, how: int) -> str:
    return [key, key.upper(), key + "x", key[:-1], key.replace(".", "_"), key.split(".")[0], "." + key,
            key + ".x", f" {key} ", key.replace(".", "..")][how % 10]


key_text = st.one_of(
    st.sampled_from(KEYS),
    st.builds(_mutated_key, st.sampled_from(KEYS), st.integers(0, 9)),
    st.text(max_size=12),
)
value_text = st.one_of(
    st.sampled_from(TRICKY_SCALARS),
    st.text(max_size=20),
    st.integers(-2**70, 2**70).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.lists(st.integers(-3, 10), max_size=4).map(str),
)


def _typed_values(key: str):
    """Override values in the neighbourhood of what `key` accepts (its type, choices and range)."""
    annotation = _field_type(key)
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    base = args[0] if typing.get_origin(annotation) in (typing.Union, types.UnionType) and len(args) == 1 else annotation
    if typing.get_origin(base) is typing.Literal:
        return st.sampled_from([str(a) for a in typing.get_args(base)] + ["x", "OFF", "0"])
    if typing.get_origin(base) is list:
        return st.lists(st.integers(-1, 20), max_size=4).map(str)
    if base is bool:
        return st.sampled_from(["true", "false", "on", "no", "1", "True", "maybe"])
    if base is int:
        return st.one_of(st.integers(-3, 300).map(str), st.sampled_from(["1.0", "1e3", "0x10", "9" * 30]))
    if base is float:
        return st.one_of(st.floats(-2, 10, allow_nan=False).map(repr), st.sampled_from(["1e-4", "0", ".inf", "9" * 400]))
    return st.one_of(st.text(max_size=12), st.sampled_from(["builtin", "x.py:f", "http://h:1/r", "2024", "null"]))


def _valid_key_override(draw_key):
    return draw_key.flatmap(lambda key: _typed_values(key).map(lambda value: f"{key}={value}"))


override = st.one_of(
    _valid_key_override(st.sampled_from(KEYS)),
    _valid_key_override(st.sampled_from(KEYS)),
    st.builds(lambda k, v: f"{k}={v}", key_text, value_text),
    st.text(max_size=30),
    st.builds(lambda k: k, st.sampled_from(KEYS)),  # no "="
)


def _check_snapshot_round_trip(config: Config) -> None:
    """A loaded config's YAML snapshot (what `--resume` reads) loads back to the same values."""
    again = config_from_dict(yaml.safe_load(config.to_yaml()), source="snapshot")
    assert again.to_dict() == config.to_dict()


@fuzz_settings(max_examples=300)
@given(st.lists(override, min_size=1, max_size=3))
def test_override_strings_load_or_fail_cleanly(overrides):
    try:
        config = load_config(None, overrides)
    except Exception as exc:  # noqa: BLE001 - the property: only clean UserErrors
        message = check_user_error(exc)
        assert message.startswith(("command line: ", "config: ")), message
        record("config overrides", "error")
    else:
        _check_snapshot_round_trip(config)
        record("config overrides", "ok")


# ------------------------------------------------------------------ YAML files
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-2**70, 2**70), st.integers(-3, 300),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12), st.sampled_from(TRICKY_SCALARS[:40]),
    st.dates(), st.datetimes(), st.binary(max_size=8),
)
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                      st.dictionaries(st.text(max_size=6), inner, max_size=3)),
                      max_leaves=6)
field_names = st.one_of(st.sampled_from(FIELDS), st.text(max_size=10), st.integers(-2, 2), st.booleans(), st.none())
section_body = st.one_of(st.dictionaries(field_names, values, max_size=4), values)
section_names = st.one_of(st.sampled_from(SECTIONS), st.text(max_size=10), st.integers(0, 3), st.none())
documents = st.one_of(st.dictionaries(section_names, section_body, max_size=4), values)


def _dump(document, flow: bool, unicode: bool) -> str:
    return yaml.safe_dump(document, default_flow_style=flow, allow_unicode=unicode, sort_keys=False)


def _typed_document(pairs: list[tuple[str, str]]) -> str:
    sections: dict[str, list[str]] = {}
    for override_text in pairs:
        key, _, value = override_text.partition("=")
        section, _, name = key.partition(".")
        sections.setdefault(section, []).append(f"  {name}: {value if value.strip() else repr(value)}")
    return "".join(f"{section}:\n" + "\n".join(lines) + "\n" for section, lines in sections.items())


typed_documents = st.lists(_valid_key_override(st.sampled_from(KEYS)).filter(lambda o: "\n" not in o and "#" not in o),
                           min_size=1, max_size=4).map(_typed_document)
yaml_text = st.one_of(
    typed_documents,
    typed_documents,
    st.builds(_dump, documents, st.booleans(), st.booleans()),
    st.builds(lambda s, k, v: f"{s}:\n  {k}: {v}\n", st.sampled_from(SECTIONS), st.sampled_from(FIELDS),
              st.sampled_from(TRICKY_SCALARS)),
    st.sampled_from(["", "\n", "---\n", "--- 1\n--- 2\n", "a: [", "train:\n  steps: 5\n steps: 6\n", "- a\n- b\n",
                     "train: &x {steps: 3}\nrollout: *x\n", "\ufefftrain:\n  steps: 4\n", "train:\n\tsteps: 4\n",
                     "train: {steps: 4, steps: 5}\n", "? [a, b]\n: 1\n", "!!python/name:os.system\n",
                     "[" * 3000, "a:\n" + "  " * 2000 + "b", "train: {seed: " + "9" * 5000 + "}\n"]),
    st.text(max_size=60),
)
counter = itertools.count()


@fuzz_settings(max_examples=250)
@given(st.one_of(yaml_text.map(lambda t: t.encode("utf-8", "surrogatepass")), st.binary(max_size=40)))
def test_yaml_config_files_load_or_fail_cleanly(fuzz_dir, content):
    path = fuzz_dir / f"config-{next(counter)}.yaml"
    path.write_bytes(content)
    try:
        config = load_config(path)
    except Exception as exc:  # noqa: BLE001
        message = check_user_error(exc)
        assert message.startswith((f"{path}: ", "config: ")), message
        record("YAML config files", "error")
    else:
        _check_snapshot_round_trip(config)
        record("YAML config files", "ok")
    path.unlink()

