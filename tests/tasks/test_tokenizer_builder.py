"""The task tokenizer round-trips through its HF files and transformers' AutoTokenizer."""

import json

import pytest
from tokenizers import Tokenizer
from transformers import AutoTokenizer

from fastrlhf.tasks.tokenizer_builder import build_char_tokenizer, build_task_tokenizer


@pytest.fixture(scope="module")
def saved_dir(tmp_path_factory):
    return build_task_tokenizer(tmp_path_factory.mktemp("tok") / "tokenizer")


def test_files_written(saved_dir):
    names = {p.name for p in saved_dir.iterdir()}
    assert {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"} <= names
    special = json.loads((saved_dir / "special_tokens_map.json").read_text())
    assert special["eos_token"] == "<eos>" and special["pad_token"] == "<pad>"


def test_auto_tokenizer_loads_with_special_tokens(saved_dir):
    hf = AutoTokenizer.from_pretrained(saved_dir)
    assert (hf.pad_token, hf.bos_token, hf.eos_token) == ("<pad>", "<bos>", "<eos>")
    assert (hf.pad_token_id, hf.bos_token_id, hf.eos_token_id, hf.unk_token_id) == (0, 1, 2, 3)
    assert len(hf) == 4 + 10 + 4 + 2


def test_one_token_per_character_with_bos_and_round_trip(saved_dir):
    hf = AutoTokenizer.from_pretrained(saved_dir)
    text = "47 + 815=862\n-3*2"
    ids = hf(text)["input_ids"]
    assert ids[0] == hf.bos_token_id and len(ids) == len(text) + 1
    assert hf.convert_ids_to_tokens(ids[1:]) == list(text)
    assert hf.decode(ids, skip_special_tokens=True) == text
    assert hf.decode(ids + [hf.eos_token_id]) == "<bos>" + text + "<eos>"


def test_tokenizers_library_gives_the_same_ids(saved_dir):
    hf = AutoTokenizer.from_pretrained(saved_dir)
    raw = Tokenizer.from_file(str(saved_dir / "tokenizer.json"))
    for text in ["1+2=", "123+456=579", "9 9\n"]:
        assert raw.encode(text).ids == hf(text)["input_ids"]


def test_unknown_characters_become_unk():
    tokenizer = build_char_tokenizer()
    assert tokenizer.encode("1a2").ids == [1, tokenizer.token_to_id("1"), 3,
                                           tokenizer.token_to_id("2")]


def test_duplicate_characters_rejected():
    with pytest.raises(ValueError):
        build_char_tokenizer(("1", "1"))
