"""JSONL prompt loading: good rows kept in order, each kind of bad line named by file:line."""

import json

import pytest

from fastrlhf.errors import UserError
from fastrlhf.tasks.prompts import load_prompts, reward_fields


def write(tmp_path, text, name="prompts.jsonl"):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_loads_rows_with_extra_fields_skipping_blank_lines(tmp_path):
    path = write(tmp_path, '{"prompt": "1+1=", "answer": "2"}\n\n  \n'
                           '{"prompt": "2+2=", "answer": "4", "level": 1}\n')
    rows = load_prompts(path)
    assert rows == [{"prompt": "1+1=", "answer": "2"},
                    {"prompt": "2+2=", "answer": "4", "level": 1}]
    assert reward_fields(rows) == {"answer": ["2", "4"], "level": [None, 1]}


@pytest.mark.parametrize("bad_line, problem", [
    ('{"prompt": "x", }', "not valid JSON"),
    ('["prompt", "x"]', "expected a JSON object, got an array"),
    ('"just a string"', "expected a JSON object, got a string"),
    ('{"question": "x"}', 'missing "prompt" (keys: question)'),
    ('{"prompt": 12}', '"prompt" must be a string, got a number'),
    ('{"prompt": null}', '"prompt" must be a string, got null'),
    ('{"prompt": "   "}', '"prompt" is empty'),
])
def test_bad_line_names_file_line_and_problem(tmp_path, bad_line, problem):
    path = write(tmp_path, '{"prompt": "ok"}\n\n' + bad_line + '\n{"prompt": "ok"}\n')
    with pytest.raises(UserError) as info:
        load_prompts(path)
    message = str(info.value)
    assert message.startswith(f"{path}:3: ") and problem in message
    assert "\n" not in message


@pytest.mark.parametrize("text", ["", "\n  \n"])
def test_empty_file_is_an_error(tmp_path, text):
    path = write(tmp_path, text)
    with pytest.raises(UserError, match="no prompts"):
        load_prompts(path)


def test_missing_file_and_bad_encoding(tmp_path):
    with pytest.raises(UserError, match="prompts file not found"):
        load_prompts(tmp_path / "missing.jsonl")
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(b'{"prompt": "caf\xe9"}\n')
    with pytest.raises(UserError, match="not UTF-8"):
        load_prompts(path)


def test_rows_with_unicode_line_separators_in_strings_load(tmp_path):
    """JSONL lines end at \\n only; `str.splitlines` used to cut a valid row at U+2028 / U+0085 / \\x0c."""
    rows = [{"prompt": "a\u2028b", "answer": "x\x85y\x0cz"}, {"prompt": "c"}]
    path = tmp_path / "p.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\r\n" for r in rows), encoding="utf-8")
    assert load_prompts(path) == rows


@pytest.mark.parametrize("line, problem", [
    ("[" * 5000, "not valid JSON"),  # was RecursionError
    ('{"prompt": "x", "answer": ' + "7" * 5000 + "}", "not valid JSON"),  # was ValueError (> 4300 digits)
    ('{"prompt": "\\ud800"}', "not valid Unicode text"),  # was a tokenizer TypeError much later
    ('{"a\\nb": 1}', 'missing "prompt" (keys: a\\nb)'),  # the message used to hold the newline
])
def test_fuzz_found_line_defects(tmp_path, line, problem):
    path = write(tmp_path, line + "\n")
    with pytest.raises(UserError) as info:
        load_prompts(path)
    assert str(info.value).startswith(f"{path}:1: ") and problem in str(info.value)
    assert "\n" not in str(info.value)


def test_a_byte_order_mark_is_ignored(tmp_path):
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"prompt": "x"}\n')
    assert load_prompts(path) == [{"prompt": "x"}]
