"""A model and its tokenizer loaded together: vocabulary sizes, missing directories, ids past the tokenizer."""

import json

import pytest
import torch

from fastrlhf.cli import main
from fastrlhf.errors import UserError
from fastrlhf.model.config import ModelConfig
from fastrlhf.model.decoder import CausalLM
from fastrlhf.model.hf_io import check_vocab, copy_tokenizer_files, load_model_and_tokenizer, save_model
from fastrlhf.model.tokenizer import load_tokenizer
from fastrlhf.tasks.tokenizer_builder import build_task_tokenizer

TOKENIZER_VOCAB = 20  # the task tokenizer: <pad> <bos> <eos> <unk>, 10 digits, + - * =, space, newline


def model_dir(tmp_path, vocab_size, name="model"):
    tok = build_task_tokenizer(tmp_path / f"tok-{name}")
    torch.manual_seed(0)
    model = CausalLM(ModelConfig(vocab_size=vocab_size, hidden_size=16, intermediate_size=32, num_layers=1, num_heads=2,
                                 num_kv_heads=1, head_dim=8, eos_token_id=2))
    return save_model(model, tmp_path / name, extra_files=copy_tokenizer_files(tok))


def test_a_vocab_smaller_than_the_tokenizers_is_an_error_naming_both_sizes(tmp_path):
    path = model_dir(tmp_path, 12)
    with pytest.raises(UserError) as info:
        load_model_and_tokenizer(path)
    message = str(info.value)
    assert message.startswith(f"{path}: ") and "vocab_size 12" in message and f"({TOKENIZER_VOCAB} token ids)" in message
    assert "\n" not in message


def test_sft_with_a_too_small_vocab_exits_2_before_writing(tmp_path, capsys):
    """Used to be a traceback: IndexError: index out of range in self (the embedding lookup of id 12+)."""
    path = model_dir(tmp_path, 12)
    data = tmp_path / "sft.jsonl"
    data.write_text(json.dumps({"prompt": "12+3=", "response": "15"}) + "\n")
    out = tmp_path / "out"
    assert main(["sft", str(data), "--model", str(path), "--out", str(out), "--steps", "1", "--eval-fraction", "0",
                 "--device", "cpu", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fastrlhf: error: ") and err.count("\n") == 1 and "vocab_size 12" in err, err
    assert not out.exists()


def test_a_larger_vocab_is_normal_warns_once_and_extra_ids_decode_to_nothing(tmp_path, capsys):
    path = model_dir(tmp_path, 32)
    model, tokenizer = load_model_and_tokenizer(path)
    load_model_and_tokenizer(path)  # the same directory again (e.g. the reference model): no second warning
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("fastrlhf: warning: ") and "vocab_size 32" in err, err
    assert f"({TOKENIZER_VOCAB} token ids)" in err and "decode to nothing" in err
    assert model.config.vocab_size == 32 and tokenizer.vocab_size == TOKENIZER_VOCAB
    digits = tokenizer.encode("42")
    assert tokenizer.decode([*digits, 25, 31]) == "42" == tokenizer.decode(torch.tensor([25, *digits, 20]))


def test_check_vocab_equal_sizes_is_silent(tmp_path, capsys):
    tokenizer = load_tokenizer(build_task_tokenizer(tmp_path / "tok"))
    check_vocab(ModelConfig(vocab_size=TOKENIZER_VOCAB, hidden_size=16, num_heads=2, num_kv_heads=2, head_dim=8),
                tokenizer, "somewhere")
    assert capsys.readouterr().err == ""


def test_a_missing_model_directory_says_so(tmp_path):
    """Used to say "<dir>: no tokenizer.json (fastrlhf needs a fast Hugging Face tokenizer directory)"."""
    missing = tmp_path / "no_such_model"
    for load in (load_tokenizer, load_model_and_tokenizer):
        with pytest.raises(UserError, match=f"^{missing}: model directory does not exist$"):
            load(missing)


def test_train_with_a_missing_model_path_says_the_directory_does_not_exist(tmp_path, capsys):
    missing, run_dir = tmp_path / "no_such_model", tmp_path / "run"
    assert main(["train", f"model.path={missing}", f"train.run_dir={run_dir}", "train.steps=1", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err == f"fastrlhf: error: {missing}: model directory does not exist\n", err
    assert not run_dir.exists()
