"""SFT / preference JSONL loaders: good rows kept, each bad line a one-line error naming file:line."""

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
