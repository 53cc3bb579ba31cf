"""Broken HF model directories found by tests/fuzz: each is a one-line UserError naming the file and key."""

import json
import struct

import pytest

from fastrlhf.errors import UserError
from fastrlhf.model.config import ModelConfig
from fastrlhf.model.hf_io import load_model
from helpers import tiny_model_dir


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    return tiny_model_dir(tmp_path_factory.mktemp("good"), "llama", hidden_size=32, intermediate_size=64)


def with_config(tmp_path, good, name, **changes):
    cfg = {**json.loads((good / "config.json").read_text()), **changes}
    path = tmp_path / name
    path.mkdir()
    (path / "config.json").write_text(json.dumps({k: v for k, v in cfg.items() if v != "DELETE"}))
    (path / "model.safetensors").write_bytes((good / "model.safetensors").read_bytes())
    return path


def error_of(path) -> str:
    with pytest.raises(UserError) as info:
        load_model(path)
    message = str(info.value)
    assert "\n" not in message and str(path) in message, message
    return message


# old behaviour in the comments: what load_model raised before these checks
@pytest.mark.parametrize("changes, expected", [
    ({"hidden_size": -32}, "'hidden_size' must be an integer in 1..16777216, got -32"),  # RuntimeError (negative dimension)
    ({"num_attention_heads": 0}, "'num_attention_heads' must be an integer in 1..16777216, got 0"),  # ZeroDivisionError
    ({"num_hidden_layers": 10 ** 9}, "'num_hidden_layers' must be an integer in 1..16777216"),  # built 10^9 layers
    ({"num_hidden_layers": 3}, "num_hidden_layers is 3 but the weights hold layers 0..1"),  # "weights missing" (ok)
    ({"intermediate_size": "64"}, "'intermediate_size' must be an integer"),  # silently int("64")
    ({"vocab_size": 101.7}, "'vocab_size' must be an integer"),  # silently truncated to 101
    ({"tie_word_embeddings": "false"}, "'tie_word_embeddings' must be true or false"),  # bool("false") = True
    ({"model_type": ["llama"]}, "model_type ['llama'] is not supported"),  # TypeError: unhashable type: 'list'
    ({"architectures": [7]}, "'architectures' must be a list of strings"),  # AttributeError: 'int' ... 'endswith'
    ({"rope_scaling": {"rope_type": "llama3", "factor": 8.0}}, "missing required key 'low_freq_factor'"),  # KeyError
    ({"rope_scaling": {"rope_type": "linear", "factor": 0.0}}, "'factor' must be a finite number > 0"),  # inf logits
    ({"rope_parameters": {"rope_type": "default", "rope_theta": 1e-300}}, "'rope_theta' must be >= 1"),  # NaN logits
    ({"rms_norm_eps": -1}, "'rms_norm_eps' must be a finite number > 0"),  # NaN logits
    ({"hidden_act": None, "eos_token_id": {"a": 1}}, "'eos_token_id' must be a token id"),  # accepted, saved back
    ({"vocab_size": "DELETE"}, "missing required key 'vocab_size'"),
])
def test_bad_config_values(tmp_path, good, changes, expected):
    assert expected in error_of(with_config(tmp_path, good, "m", **changes))


def test_config_json_with_a_huge_integer_or_deep_nesting(tmp_path, good):
    for name, text in {"huge": '{"vocab_size": ' + "9" * 5000 + "}", "deep": "[" * 5000}.items():
        path = tmp_path / name
        path.mkdir()
        (path / "config.json").write_text(text)  # was ValueError (> 4300 digits) / RecursionError
        assert "not valid JSON" in error_of(path)


def _safetensors(good, edit) -> bytes:
    data = (good / "model.safetensors").read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + length])
    edit(header)
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + data[8 + length:]


def test_integer_weights_are_refused(tmp_path, good):
    def to_int(header):
        header["model.norm.weight"]["dtype"] = "I32"  # same byte size as F32: safetensors reads it
    path = tmp_path / "ints"
    path.mkdir()
    (path / "config.json").write_bytes((good / "config.json").read_bytes())
    (path / "model.safetensors").write_bytes(_safetensors(good, to_int))
    assert "tensor 'model.norm.weight' has dtype int32" in error_of(path)  # was silently cast to float


@pytest.mark.parametrize("weight_map, expected", [
    (None, "malformed safetensors index"),  # AttributeError: 'NoneType' object has no attribute 'values'
    ({"a": ["x"]}, "maps to ['x'], not a shard file name"),  # TypeError: unhashable type: 'list'
    ({"a": "x.safetensors", "b": None}, "maps to None"),  # TypeError: '<' not supported between NoneType and str
    ({"a": "../good/model.safetensors"}, "not a shard file name in the model directory"),  # read outside the dir
])
def test_bad_shard_indexes(tmp_path, good, weight_map, expected):
    path = tmp_path / "sharded"
    path.mkdir()
    (path / "config.json").write_bytes((good / "config.json").read_bytes())
    (path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    assert expected in error_of(path)


def test_model_config_rejects_non_positive_sizes():
    with pytest.raises(UserError, match="vocab_size must be >= 1, got 0"):
        ModelConfig(vocab_size=0)
