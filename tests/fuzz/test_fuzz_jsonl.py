"""Fuzzing the JSONL loaders: prompts (`task.prompts`), SFT examples and preference pairs.

Properties: every file either loads or raises a one-line `UserError` naming the file (never another
exception); and a file written line by line with `json.dumps` from valid rows loads back exactly
those rows, whatever characters the strings hold (JSONL lines end at "\\n" only).
"""

from __future__ import annotations

import itertools
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fuzzing import check_user_error, fuzz_settings, record
from fastrlhf.tasks.examples import load_preference_pairs, load_sft_examples
from fastrlhf.tasks.prompts import load_prompts

pytestmark = pytest.mark.filterwarnings("ignore::hypothesis.errors.HypothesisWarning")  # long reprs of big inputs

# characters that break naive line handling or printing: line / paragraph separators, NEL, CR,
# control characters, a BOM, lone surrogates (legal in JSON escapes, not encodable as UTF-8)
SPECIAL_CHARS = ["\n", "\r", "\r\n", "\u2028", "\u2029", "\x85", "\x0b", "\x0c", "\x1c", "\x1e", "\x00", "\t",
                 "\ufeff", "\ud800", "\udfff", "é", "日本", "🙂", '"', "\\", "{", "}"]
texts = st.one_of(
    st.text(max_size=12),
    st.lists(st.one_of(st.sampled_from(SPECIAL_CHARS), st.text(max_size=3)), max_size=5).map("".join),
    st.sampled_from(["", " ", "\n", "1+1=", "x" * 3000]),
)
json_scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(), texts)
json_values = st.recursive(json_scalars, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                                st.dictionaries(texts, inner, max_size=3)),
                           max_leaves=5)


def row_strategy(fields: tuple[str, ...]):
    """Objects that have some / all of `fields`, usually as strings, plus extra keys."""
    field_values = st.one_of(texts, texts, texts, json_values)
    required = st.fixed_dictionaries({}, optional={f: field_values for f in fields})
    complete = st.fixed_dictionaries({f: texts for f in fields})
    extra = st.dictionaries(texts, json_values, max_size=2)
    return st.builds(lambda a, b: {**b, **a}, st.one_of(required, complete, complete), extra)


def _dumps(value, ensure_ascii: bool) -> str:
    return json.dumps(value, ensure_ascii=ensure_ascii)


def good_line(fields):
    prompt = texts.filter(lambda t: bool(t.strip()))
    row = st.fixed_dictionaries({"prompt": prompt, **{f: texts for f in fields[1:]}},
                                optional={"answer": json_values})
    return st.builds(_dumps, row, st.booleans())


def line_strategy(fields):
    return st.one_of(
        good_line(fields),
        good_line(fields),
        st.builds(_dumps, row_strategy(fields), st.booleans()),
        st.builds(_dumps, row_strategy(fields), st.booleans()),
        st.builds(_dumps, json_values, st.booleans()),
        st.sampled_from(["", "   ", "{", "}", "[]", "null", "NaN", "-Infinity", '{"prompt": 1e999}', "{'prompt': 'x'}",
                         '{"prompt": "a"} {"prompt": "b"}', '{"prompt": "a",}', "[" * 5000 + "]" * 5000,
                         '{"prompt": ' * 3000, "1" * 5000, '{"prompt": "x", "answer": ' + "7" * 5000 + "}",
                         '{"prompt": "\\ud800"}', '{"prompt": "x", "prompt": 3}', '\ufeff{"prompt": "x"}']),
        st.text(max_size=20),
    )


def file_strategy(fields):
    """Bytes of a JSONL file: lines joined by \\n or \\r\\n, sometimes with invalid UTF-8 in it."""
    def join(lines, crlf, corrupt, final_newline):
        text = ("\r\n" if crlf else "\n").join(lines) + ("\n" if final_newline else "")
        data = text.encode("utf-8", "surrogatepass")
        if corrupt is not None:
            data = data[:corrupt % (len(data) + 1)] + b"\xff\xc3" + data[corrupt % (len(data) + 1):]
        return data
    lines = st.one_of(st.lists(line_strategy(fields), max_size=5), st.lists(good_line(fields), min_size=1, max_size=4))
    return st.builds(join, lines, st.booleans(),
                     st.one_of(st.none(), st.none(), st.none(), st.integers(0, 10_000)), st.booleans())


LOADERS = {
    "prompt JSONL": (load_prompts, ("prompt",)),
    "SFT JSONL": (load_sft_examples, ("prompt", "response")),
    "preference JSONL": (load_preference_pairs, ("prompt", "chosen", "rejected")),
}
counter = itertools.count()


def _check_file(fuzz_dir, kind: str, content: bytes) -> None:
    loader, _ = LOADERS[kind]
    path = fuzz_dir / f"data-{next(counter)}.jsonl"
    path.write_bytes(content)
    try:
        rows = loader(path)
    except Exception as exc:  # noqa: BLE001 - the property: only clean UserErrors
        check_user_error(exc, str(path))
        record(kind, "error")
    else:
        assert rows and all(isinstance(r, dict) for r in rows)
        record(kind, "ok")
    finally:
        path.unlink()


@pytest.mark.parametrize("kind", sorted(LOADERS))
@fuzz_settings(max_examples=150)
@given(data=st.data())
def test_jsonl_files_load_or_fail_cleanly(fuzz_dir, kind, data):
    _check_file(fuzz_dir, kind, data.draw(file_strategy(LOADERS[kind][1]), label="file bytes"))


# ------------------------------------------------------------------ valid rows round-trip
def valid_rows(fields):
    prompt = texts.filter(lambda t: t.strip() and "\ud800" not in t and "\udfff" not in t)
    field_text = texts.filter(lambda t: "\ud800" not in t and "\udfff" not in t)
    row = st.fixed_dictionaries({"prompt": prompt, **{f: field_text for f in fields[1:]}})
    return st.lists(row, min_size=1, max_size=4)


@pytest.mark.parametrize("kind", sorted(LOADERS))
@fuzz_settings(max_examples=40)
@given(data=st.data(), ensure_ascii=st.booleans())
def test_valid_rows_load_back_exactly(fuzz_dir, kind, data, ensure_ascii):
    loader, fields = LOADERS[kind]
    rows = data.draw(valid_rows(fields))
    path = fuzz_dir / f"valid-{next(counter)}.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=ensure_ascii) + "\n" for r in rows), encoding="utf-8")
    try:
        assert loader(path) == rows
    finally:
        path.unlink()
    record(f"{kind} (valid rows, round trip)", "ok")
