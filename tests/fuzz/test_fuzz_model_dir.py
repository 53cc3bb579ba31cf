"""Fuzzing Hugging Face model directories: config.json contents, safetensors files and shard indexes.

A valid tiny Llama directory (vocabulary 20 = the task tokenizer's) is mutated: config.json keys
deleted or set to values of the wrong type / sign / size, unknown model types, vocabularies that do
not match the weights or the tokenizer; model.safetensors truncated, with a wrong header length, a
header that is not JSON, wrong dtypes / shapes / offsets, missing or extra tensors; a shard index
with a bad weight map. Properties: `load_model_and_tokenizer` either returns a model whose forward
pass over the tokenizer's ids gives finite logits, or raises a one-line `UserError` naming the
directory; and `fastrlhf sft DATA --model DIR --out OUT` either writes OUT completely or exits 2
with one line on stderr and leaves OUT absent.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import struct

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from fuzzing import check_user_error, fuzz_settings, record
from fastrlhf.cli import main
from fastrlhf.model.hf_io import load_model_and_tokenizer
from fastrlhf.tasks.tokenizer_builder import build_task_tokenizer
from helpers import tiny_model_dir

pytestmark = [pytest.mark.usefixtures("single_thread"),
              pytest.mark.filterwarnings("ignore::hypothesis.errors.HypothesisWarning")]

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
counter = itertools.count()


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    """A valid tiny HF Llama (GQA: 4 heads, 2 KV heads) with the task's 20-token tokenizer."""
    path = tiny_model_dir(tmp_path_factory.mktemp("base"), vocab_size=20, pad_token_id=0, bos_token_id=1,
                          eos_token_id=2, hidden_size=32, intermediate_size=64, num_attention_heads=4,
                          num_key_value_heads=2)
    build_task_tokenizer(path)
    return path


@pytest.fixture(scope="module")
def sft_data(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "sft.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"{i}+{i}=", "response": str(2 * i)}) + "\n" for i in range(4)))
    return path


def make_dir(fuzz_dir, base_dir, config: bytes | None = None, weights: bytes | None = None,
             index: bytes | None = None, shards: dict[str, bytes] | None = None):
    """A model directory: base_dir's files (linked), with config.json / model.safetensors / an index replaced."""
    path = fuzz_dir / f"model-{next(counter)}"
    path.mkdir()
    for name in TOKENIZER_FILES:
        os.symlink(base_dir / name, path / name)
    (path / "config.json").write_bytes(config if config is not None else (base_dir / "config.json").read_bytes())
    if index is not None:
        (path / "model.safetensors.index.json").write_bytes(index)
        for name, data in (shards or {}).items():
            (path / name).write_bytes(data)
    elif weights is not None:
        (path / "model.safetensors").write_bytes(weights)
    else:
        os.symlink(base_dir / "model.safetensors", path / "model.safetensors")
    return path


def check_load(path, kind: str) -> None:
    """The property for the loader: a working model, or a one-line UserError naming the directory."""
    try:
        model, tokenizer = load_model_and_tokenizer(path)
    except Exception as exc:  # noqa: BLE001 - the property: only clean UserErrors
        check_user_error(exc, str(path))
        record(kind, "error")
        return
    ids = torch.tensor([list(range(tokenizer.vocab_size))])
    with torch.no_grad():
        logits = model(ids)
    assert logits.shape == (1, tokenizer.vocab_size, model.config.vocab_size)
    if not torch.isfinite(logits).all():  # only flipped weight bytes (NaN / inf weights) may do this
        assert any(not torch.isfinite(p).all() for p in model.parameters()), "finite weights gave non-finite logits"
    record(kind, "ok")


def check_sft_cli(path, data, fuzz_dir, capsys, kind: str) -> None:
    """The property for a writing command: OUT complete on success, absent after a one-line exit-2 error."""
    out = fuzz_dir / f"out-{next(counter)}"
    capsys.readouterr()
    rc = main(["sft", str(data), "--model", str(path), "--out", str(out), "--steps", "1", "--batch-size", "2",
               "--eval-fraction", "0", "--device", "cpu", "--quiet"])
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if not line.startswith("fastrlhf: warning: ")]
    if rc == 0:
        assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in out.iterdir()}
        record(kind, "ok")
        shutil.rmtree(out)
    else:
        assert rc == 2 and len(errors) == 1 and errors[0].startswith("fastrlhf: error: "), err
        assert not out.exists(), f"{out} left behind after: {err}"
        assert not [p for p in fuzz_dir.iterdir() if p.name.startswith(f".{out.name}")], "temporary files left"
        record(kind, "error")


# ------------------------------------------------------------------ config.json
CONFIG_KEYS = ["model_type", "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
               "num_attention_heads", "num_key_value_heads", "head_dim", "rms_norm_eps", "rope_theta",
               "rope_scaling", "rope_parameters", "max_position_embeddings", "tie_word_embeddings", "attention_bias",
               "architectures", "hidden_act", "sliding_window", "use_sliding_window", "layer_types",
               "max_window_layers", "bos_token_id", "eos_token_id", "pad_token_id", "mlp_bias", "dtype"]
json_scalars = st.one_of(st.none(), st.booleans(), st.integers(-5, 70), st.integers(-2**64, 2**64),
                         st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=8),
                         st.sampled_from(["32", "1e-6", "llama", "qwen2", "qwen3", "mistral", "gemma", "silu", "gelu",
                                          "float16", "true", "full_attention", "sliding_attention"]))
json_values = st.recursive(json_scalars, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                                st.dictionaries(st.text(max_size=5), inner, max_size=3)),
                           max_leaves=4)
rope_dicts = st.fixed_dictionaries({}, optional={
    "rope_type": st.sampled_from(["default", "linear", "llama3", "yarn", "dynamic", 3, None]),
    "type": st.sampled_from(["linear", "llama3", "su"]),
    "factor": st.one_of(st.floats(-2, 40), st.integers(-1, 8), st.text(max_size=3), st.none()),
    "low_freq_factor": st.one_of(st.floats(-1, 8), st.sampled_from([1.0, 0, "1"])),
    "high_freq_factor": st.one_of(st.floats(-1, 8), st.sampled_from([4.0, 1.0, 0])),
    "original_max_position_embeddings": st.one_of(st.integers(-8, 64), st.sampled_from([16, 0, "16"])),
    "rope_theta": st.one_of(st.floats(-10, 1e6), st.sampled_from([0, 10000.0, "x"])),
})
key_values = {
    "vocab_size": st.integers(-2, 40), "hidden_size": st.integers(-4, 64), "num_hidden_layers": st.integers(-2, 4),
    "num_attention_heads": st.integers(-2, 8), "num_key_value_heads": st.integers(-2, 8),
    "head_dim": st.integers(-4, 16), "intermediate_size": st.integers(-4, 96),
    "rope_scaling": rope_dicts, "rope_parameters": rope_dicts,
    "layer_types": st.lists(st.sampled_from(["full_attention", "sliding_attention", "x"]), max_size=3),
    "sliding_window": st.integers(-2, 8), "eos_token_id": st.one_of(st.integers(-2, 25), st.lists(st.integers(-1, 25))),
}
mutation = st.one_of(
    st.tuples(st.just("delete"), st.sampled_from(CONFIG_KEYS)),
    st.tuples(st.just("set"), st.sampled_from(CONFIG_KEYS), json_values),
    st.sampled_from(sorted(key_values)).flatmap(lambda k: st.tuples(st.just("set"), st.just(k), key_values[k])),
    st.sampled_from(sorted(key_values)).flatmap(lambda k: st.tuples(st.just("set"), st.just(k), key_values[k])),
    st.tuples(st.just("set"), st.text(max_size=8), json_values),
)


def mutate_config(base: dict, mutations) -> dict:
    config = dict(base)
    for op in mutations:
        if op[0] == "delete":
            config.pop(op[1], None)
        else:
            config[op[1]] = op[2]
    return config


config_bytes = st.one_of(
    st.lists(mutation, min_size=1, max_size=3).map(lambda m: ("mutate", m)),
    st.lists(mutation, min_size=1, max_size=3).map(lambda m: ("mutate", m)),
    st.lists(mutation, min_size=1, max_size=3).map(lambda m: ("mutate", m)),
    json_values.map(lambda v: ("raw", json.dumps(v).encode())),
    st.binary(max_size=30).map(lambda b: ("raw", b)),
    st.sampled_from([b"", b"{", b"[" * 5000, b'{"vocab_size": ' + b"9" * 5000 + b"}", b"\xff\xfe{}"]).map(
        lambda b: ("raw", b)),
)


def _config_file(base_dir, spec) -> bytes:
    if spec[0] == "raw":
        return spec[1]
    return json.dumps(mutate_config(json.loads((base_dir / "config.json").read_text()), spec[1])).encode()


@fuzz_settings(max_examples=200)
@given(spec=config_bytes)
def test_config_json_loads_or_fails_cleanly(fuzz_dir, base_dir, spec):
    check_load(make_dir(fuzz_dir, base_dir, config=_config_file(base_dir, spec)), "config.json contents")


# ------------------------------------------------------------------ safetensors files
def split_safetensors(data: bytes) -> tuple[dict, bytes]:
    (length,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8:8 + length]), data[8 + length:]


def join_safetensors(header, body: bytes) -> bytes:
    text = json.dumps(header).encode() if not isinstance(header, bytes) else header
    return struct.pack("<Q", len(text)) + text + body


DTYPES = ["F32", "F16", "BF16", "F64", "I64", "I32", "I8", "U8", "BOOL", "F8_E4M3", "F8_E5M2", "C64", "XYZ", "", 7, None]
tensor_edit = st.one_of(
    st.tuples(st.just("dtype"), st.sampled_from(DTYPES)),
    st.tuples(st.just("shape"), st.one_of(st.lists(st.integers(-2, 70), max_size=3), json_values)),
    st.tuples(st.just("offsets"), st.one_of(st.lists(st.integers(-5, 90_000), min_size=0, max_size=3), json_values)),
    st.tuples(st.just("delete")),
    st.tuples(st.just("rename"), st.text(max_size=20)),
    st.tuples(st.just("value"), json_values),
)
safetensors_op = st.one_of(
    st.tuples(st.just("truncate"), st.integers(0, 90_000)),
    st.tuples(st.just("header_length"), st.one_of(st.integers(0, 2**64 - 1), st.integers(-16, 16))),
    st.tuples(st.just("header_bytes"), st.one_of(st.binary(max_size=40), json_values.map(lambda v: json.dumps(v).encode()))),
    st.tuples(st.just("tensor"), st.integers(0, 30), tensor_edit),
    st.tuples(st.just("tensor"), st.integers(0, 30), tensor_edit),
    st.tuples(st.just("tensor"), st.integers(0, 30), tensor_edit),
    st.tuples(st.just("metadata"), json_values),
    st.tuples(st.just("add"), st.text(max_size=12), st.sampled_from(DTYPES[:6]), st.lists(st.integers(0, 4), max_size=2)),
    st.tuples(st.just("flip"), st.integers(0, 90_000), st.integers(1, 255)),
    st.tuples(st.just("append"), st.binary(min_size=1, max_size=16)),
)


def mutate_safetensors(data: bytes, op) -> bytes:
    kind = op[0]
    if kind == "truncate":
        return data[:op[1] % (len(data) + 1)]
    if kind == "flip":
        position = op[1] % len(data)
        return data[:position] + bytes([data[position] ^ op[2]]) + data[position + 1:]
    if kind == "append":
        return data + op[1]
    if len(data) < 8:
        return data
    (length,) = struct.unpack("<Q", data[:8])
    if kind == "header_length":
        value = op[1] if op[1] >= 16 else length + op[1]
        return struct.pack("<Q", max(0, min(value, 2**64 - 1))) + data[8:]
    try:
        header, body = split_safetensors(data)
    except ValueError:  # an earlier mutation already broke the header: leave it broken
        return data
    if not isinstance(header, dict):
        return data
    if kind == "header_bytes":
        return join_safetensors(op[1], body)
    if kind == "metadata":
        header["__metadata__"] = op[1]
    elif kind == "add":
        header[op[1]] = {"dtype": op[2], "shape": op[3], "data_offsets": [0, 0]}
    elif kind == "tensor":
        names = sorted(k for k in header if k != "__metadata__")
        if not names:
            return data
        name = names[op[1] % len(names)]
        edit = op[2]
        if not isinstance(header[name], dict) and edit[0] in ("dtype", "shape", "offsets"):
            return data
        if edit[0] == "delete":
            del header[name]
        elif edit[0] == "rename":
            header[edit[1]] = header.pop(name)
        elif edit[0] == "value":
            header[name] = edit[1]
        else:
            header[name][{"dtype": "dtype", "shape": "shape", "offsets": "data_offsets"}[edit[0]]] = edit[1]
    return join_safetensors(header, body)


@fuzz_settings(max_examples=200)
@given(ops=st.lists(safetensors_op, min_size=1, max_size=3))
def test_safetensors_files_load_or_fail_cleanly(fuzz_dir, base_dir, ops):
    data = (base_dir / "model.safetensors").read_bytes()
    for op in ops:
        data = mutate_safetensors(data, op)
    check_load(make_dir(fuzz_dir, base_dir, weights=data), "safetensors files")


# ------------------------------------------------------------------ sharded checkpoints
index_op = st.one_of(
    st.tuples(st.just("map"), json_values),
    st.tuples(st.just("top"), json_values),
    st.tuples(st.just("entry"), st.integers(0, 30), st.one_of(
        json_scalars, st.sampled_from(["missing.safetensors", "../model-0/model.safetensors", ".", "", "/etc/passwd",
                                       "config.json", "tokenizer.json", "a/b.safetensors"]))),
    st.tuples(st.just("drop"), st.integers(0, 30)),
    st.tuples(st.just("raw"), st.binary(max_size=20)),
)


@fuzz_settings(max_examples=100)
@given(ops=st.lists(index_op, min_size=1, max_size=3))
def test_sharded_indexes_load_or_fail_cleanly(fuzz_dir, base_dir, ops):
    header, body = split_safetensors((base_dir / "model.safetensors").read_bytes())
    names = sorted(k for k in header if k != "__metadata__")
    halves = [names[: len(names) // 2], names[len(names) // 2:]]
    shards, weight_map = {}, {}
    for i, part in enumerate(halves):
        shard_header = {"__metadata__": {"format": "pt"}}
        chunks, offset = [], 0
        for name in part:
            start, end = header[name]["data_offsets"]
            chunks.append(body[start:end])
            shard_header[name] = {**header[name], "data_offsets": [offset, offset + end - start]}
            offset += end - start
        file_name = f"model-0000{i + 1}-of-00002.safetensors"
        shards[file_name] = join_safetensors(shard_header, b"".join(chunks))
        weight_map.update(dict.fromkeys(part, file_name))
    index: object = {"metadata": {"total_size": len(body)}, "weight_map": weight_map}
    raw = None
    for op in ops:
        if op[0] == "raw":
            raw = op[1]
        elif op[0] == "top":
            index = op[1]
        elif isinstance(index, dict) and op[0] == "map":
            index["weight_map"] = op[1]
        elif isinstance(index, dict) and isinstance(index.get("weight_map"), dict) and index["weight_map"]:
            keys = sorted(index["weight_map"])
            key = keys[op[1] % len(keys)]
            if op[0] == "drop":
                del index["weight_map"][key]
            else:
                index["weight_map"][key] = op[2]
    content = raw if raw is not None else json.dumps(index).encode()
    check_load(make_dir(fuzz_dir, base_dir, index=content, shards=shards), "sharded checkpoints (index.json)")


# ------------------------------------------------------------------ through `fastrlhf sft`: nothing half-written
@fuzz_settings(max_examples=25)
@given(spec=st.one_of(st.none(), config_bytes), ops=st.lists(safetensors_op, max_size=2))
def test_sft_on_a_fuzzed_model_dir_writes_all_or_nothing(fuzz_dir, base_dir, sft_data, capsys, spec, ops):
    """config.json and / or model.safetensors damaged (or neither: the command must then succeed)."""
    data = (base_dir / "model.safetensors").read_bytes()
    for op in ops:
        data = mutate_safetensors(data, op)
    path = make_dir(fuzz_dir, base_dir, config=None if spec is None else _config_file(base_dir, spec), weights=data)
    check_sft_cli(path, sft_data, fuzz_dir, capsys, "model dirs through `fastrlhf sft` (OUT all or nothing)")


@fuzz_settings(max_examples=12)
@given(vocab=st.integers(1, 40), tie=st.booleans())
def test_model_vocab_against_the_tokenizer(fuzz_dir, base_dir, sft_data, capsys, vocab, tie):
    """Model vocabularies of every size next to the 20-token tokenizer: smaller is an error naming both
    sizes, larger a warning, and `fastrlhf sft` writes all or nothing."""
    from fastrlhf.model.config import ModelConfig
    from fastrlhf.model.decoder import CausalLM
    from fastrlhf.model.hf_io import save_model

    torch.manual_seed(vocab)
    model = CausalLM(ModelConfig(vocab_size=vocab, hidden_size=16, intermediate_size=32, num_layers=1, num_heads=2,
                                 num_kv_heads=1, head_dim=8, tie_word_embeddings=tie, eos_token_id=2))
    path = fuzz_dir / f"vocab-{next(counter)}"
    save_model(model, path, extra_files={n: (base_dir / n).read_bytes() for n in TOKENIZER_FILES})
    try:
        load_model_and_tokenizer(path)
    except Exception as exc:  # noqa: BLE001
        message = check_user_error(exc, str(path))
        assert vocab < 20 and f"vocab_size {vocab}" in message and "20" in message, message
    else:
        assert vocab >= 20
    check_sft_cli(path, sft_data, fuzz_dir, capsys, "model vocab_size vs tokenizer (through `fastrlhf sft`)")
