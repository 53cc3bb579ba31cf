"""SFT / preference JSONL loaders: good rows kept, each bad line a one-line error naming file:line."""

import json

import pytest

from fastrlhf.errors import UserError
from fastrlhf.tasks.examples import load_preference_pairs, load_sft_examples


def write(tmp_path, text, name="data.jsonl"):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_loads_rows_in_order(tmp_path):
    sft = write(tmp_path, '{"prompt": "12=", "response": "21", "note": 1}\n\n{"prompt": "3=", "response": ""}\n')
    assert load_sft_examples(sft) == [{"prompt": "12=", "response": "21"}, {"prompt": "3=", "response": ""}]
    pairs = write(tmp_path, '{"prompt": "12=", "chosen": "12", "rejected": "21", "digits": "12"}\n', "p.jsonl")
    assert load_preference_pairs(pairs) == [{"prompt": "12=", "chosen": "12", "rejected": "21", "digits": "12"}]


@pytest.mark.parametrize("loader, bad_line, problem", [
    (load_sft_examples, '{"prompt": "x", ', "not valid JSON"),
    (load_sft_examples, '[1, 2]', "expected a JSON object, got an array"),
    (load_sft_examples, '{"prompt": "x"}', 'missing "response" (keys: prompt)'),
    (load_sft_examples, '{"prompt": "x", "response": 3}', '"response" must be a string, got a number'),
    (load_sft_examples, '{"prompt": " ", "response": "y"}', '"prompt" is empty'),
    (load_preference_pairs, '{"prompt": "x", "chosen": "a"}', 'missing "rejected"'),
    (load_preference_pairs, '{"prompt": "x", "chosen": null, "rejected": "b"}', '"chosen" must be a string, got null'),
    (load_preference_pairs, '{"chosen": "a", "rejected": "b"}', 'missing "prompt"'),
])
def test_bad_line_names_file_line_and_problem(tmp_path, loader, bad_line, problem):
    good = '{"prompt": "p", "response": "r", "chosen": "a", "rejected": "b"}'
    path = write(tmp_path, f"{good}\n\n{bad_line}\n{good}\n")
    with pytest.raises(UserError) as info:
        loader(path)
    message = str(info.value)
    assert message.startswith(f"{path}:3: ") and problem in message
    assert "\n" not in message


@pytest.mark.parametrize("loader, what", [(load_sft_examples, "SFT examples"), (load_preference_pairs, "preference pairs")])
def test_empty_missing_and_undecodable_files(tmp_path, loader, what):
    with pytest.raises(UserError, match=f"no {what}"):
        loader(write(tmp_path, "\n \n"))
    with pytest.raises(UserError, match=f"{what} file not found"):
        loader(tmp_path / "absent.jsonl")
    with pytest.raises(UserError, match="is a directory"):
        loader(tmp_path)
    bad = tmp_path / "latin1.jsonl"
    bad.write_bytes(b'{"prompt": "\xe9"}\n')
    with pytest.raises(UserError, match="not UTF-8"):
        loader(bad)


@pytest.mark.parametrize("loader, row", [
    (load_sft_examples, {"prompt": "a\u2028b", "response": "c\x85d\x0be"}),
    (load_preference_pairs, {"prompt": "p", "chosen": "x\u2029y", "rejected": "\x1c"}),
])
def test_rows_with_unicode_line_separators_in_strings_load(tmp_path, loader, row):
    """JSONL lines end at \\n only; `str.splitlines` used to cut a valid row at U+2028 / U+0085 / \\x0b."""
    path = tmp_path / "rows.jsonl"
    path.write_text(json.dumps(row, ensure_ascii=False) + "\n", encoding="utf-8")
    assert loader(path) == [row]


@pytest.mark.parametrize("loader, line, problem", [
    (load_sft_examples, "[" * 5000, "not valid JSON"),  # was RecursionError
    (load_preference_pairs, '{"prompt": "x", "chosen": "a", "rejected": "b", "n": ' + "7" * 5000 + "}",
     "not valid JSON"),  # was ValueError (> 4300 digits)
    (load_sft_examples, '{"prompt": "x", "response": "\\udc00"}', '"response" is not valid Unicode text'),  # was a
    # tokenizer TypeError traceback in `fastrlhf sft`
    (load_preference_pairs, '{"\\r": 1}', 'missing "prompt" (keys: \\r)'),  # the message used to hold the CR
])
def test_fuzz_found_line_defects(tmp_path, loader, line, problem):
    path = write(tmp_path, line + "\n")
    with pytest.raises(UserError) as info:
        loader(path)
    assert str(info.value).startswith(f"{path}:1: ") and problem in str(info.value)
    assert "\n" not in str(info.value) and "\r" not in str(info.value)
