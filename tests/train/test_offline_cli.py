"""`fastrlhf sft` and `fastrlhf train-rm` end to end on tiny data, and bad input: exit 2, nothing written."""

import json
import random
import re

import pytest

from fastrlhf.cli import main
from fastrlhf.model.hf_io import load_model
from fastrlhf.tasks.tokenizer_builder import build_task_tokenizer
from helpers import tiny_model_dir

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A tiny random HF Llama with the task's character tokenizer (vocabulary of 20)."""
    path = tiny_model_dir(tmp_path_factory.mktemp("models"), vocab_size=20, pad_token_id=0, bos_token_id=1,
                          eos_token_id=2, hidden_size=32, intermediate_size=64, num_attention_heads=2, num_key_value_heads=2)
    build_task_tokenizer(path)
    return path


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def reversal_rows(n, seed=0):
    rng = random.Random(seed)
    digits = ["".join(rng.choice("0123456789") for _ in range(3)) for _ in range(n)]
    return [{"prompt": d + "=", "response": d[::-1]} for d in digits]


def last_digit_pairs(n, seed=0):
    rng, rows = random.Random(seed), []
    while len(rows) < n:
        a, b = ("".join(rng.choice("0123456789") for _ in range(rng.randint(1, 3))) for _ in range(2))
        if a[-1] != b[-1]:
            rows.append({"prompt": "5=", "chosen": max(a, b, key=lambda s: s[-1]), "rejected": min(a, b, key=lambda s: s[-1])})
    return rows


def test_sft_end_to_end_lowers_held_out_loss(model_dir, tmp_path, capsys):
    data = write_jsonl(tmp_path / "sft.jsonl", reversal_rows(200))
    out = tmp_path / "sft-out"
    rc = main(["sft", str(data), "--model", str(model_dir), "--out", str(out), "--steps", "40",
               "--batch-size", "32", "--lr", "3e-3", "--eval-fraction", "0.1", "--quiet"])
    assert rc == 0
    text = capsys.readouterr().out
    before, after = map(float, re.search(r"held-out loss \(response tokens\): ([\d.]+) -> ([\d.]+)", text).groups())
    assert after < before - 0.5, text
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in out.iterdir()}
    assert not load_model(out).config.score_head


def test_train_rm_end_to_end_raises_held_out_accuracy(model_dir, tmp_path, capsys):
    train = write_jsonl(tmp_path / "pairs.jsonl", last_digit_pairs(300, seed=0))
    held_out = write_jsonl(tmp_path / "pairs_eval.jsonl", last_digit_pairs(100, seed=1))
    out = tmp_path / "rm-out"
    out.mkdir()  # an existing empty directory is fine
    rc = main(["train-rm", str(train), "--eval", str(held_out), "--model", str(model_dir), "--out", str(out),
               "--epochs", "8", "--batch-size", "32", "--lr", "3e-3"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "300 training pairs, 100 held out, 75 steps" in text
    before, after = map(float, re.search(r"held-out pair accuracy: ([\d.]+) -> ([\d.]+)", text).groups())
    assert after > 0.8 and after > before + 0.15, text
    reloaded = load_model(out)
    assert reloaded.config.score_head and reloaded.config.pad_token_id == 0
    assert (out / "tokenizer.json").is_file()


def _bad_cases(tmp_path, model_dir):
    good_sft = write_jsonl(tmp_path / "good.jsonl", reversal_rows(20))
    bad_json = tmp_path / "bad.jsonl"
    bad_json.write_text('{"prompt": "1=", "response": "1"}\n{"prompt": \n')
    common = ["--model", str(model_dir), "--quiet"]
    return {
        "missing data": (["sft", str(tmp_path / "absent.jsonl"), *common], "absent.jsonl: SFT examples file not found"),
        "bad row": (["sft", str(bad_json), *common], "bad.jsonl:2: not valid JSON"),
        "pairs file given to sft": (["train-rm", str(good_sft), *common], 'good.jsonl:1: missing "chosen"'),
        "missing model": (["sft", str(good_sft), "--model", str(tmp_path / "nomodel"), "--quiet"],
                          "nomodel: model directory does not exist"),
        "zero steps": (["sft", str(good_sft), *common, "--steps", "0"], "--steps must be ≥ 1"),
        "negative lr": (["train-rm", str(good_sft), *common, "--lr", "-1"], "--lr must be > 0"),
        "eval fraction": (["sft", str(good_sft), *common, "--eval-fraction", "1.5"], "--eval-fraction must be in [0, 1)"),
        "bad eval file": (["train-rm", str(write_jsonl(tmp_path / "p.jsonl", last_digit_pairs(5))), *common,
                           "--eval", str(bad_json)], 'bad.jsonl:1: missing "chosen"'),
    }


@pytest.mark.parametrize("case", ["missing data", "bad row", "pairs file given to sft", "missing model", "zero steps",
                                  "negative lr", "eval fraction", "bad eval file"])
def test_bad_input_exits_2_before_writing(model_dir, tmp_path, capsys, case):
    argv, message = _bad_cases(tmp_path, model_dir)[case]
    out = tmp_path / "out"
    assert main([*argv, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fastrlhf: error: ") and err.count("\n") == 1 and message in err, err
    assert not out.exists()


def test_non_empty_out_dir_is_refused_and_kept(model_dir, tmp_path, capsys):
    data = write_jsonl(tmp_path / "sft.jsonl", reversal_rows(20))
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert main(["sft", str(data), "--model", str(model_dir), "--out", str(out), "--quiet"]) == 2
    assert "already exists and is not an empty directory" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


# ------------------------------------------------------------------ --device
@pytest.mark.parametrize("command", ["sft", "train-rm"])
def test_device_cpu_trains_on_the_cpu(model_dir, tmp_path, capsys, command):
    rows = reversal_rows(8) if command == "sft" else last_digit_pairs(8)
    data = write_jsonl(tmp_path / "data.jsonl", rows)
    out = tmp_path / "out"
    assert main([command, str(data), "--model", str(model_dir), "--out", str(out), "--steps", "2", "--batch-size", "4",
                 "--device", "cpu", "--quiet"]) == 0, capsys.readouterr().err
    assert (out / "model.safetensors").is_file()


@pytest.mark.parametrize("command", ["sft", "train-rm"])
def test_device_cuda_without_cuda_is_a_one_line_error(model_dir, tmp_path, capsys, monkeypatch, command):
    """Before: `--device` did not exist (the commands always ran on the CPU)."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    data = write_jsonl(tmp_path / "data.jsonl", reversal_rows(8) if command == "sft" else last_digit_pairs(8))
    out = tmp_path / "out"
    assert main([command, str(data), "--model", str(model_dir), "--out", str(out), "--device", "cuda", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fastrlhf: error: --device cuda, but no CUDA device is available") and err.count("\n") == 1, err
    assert not out.exists()


@pytest.mark.parametrize("command", ["sft", "train-rm"])
def test_device_auto_uses_cuda_when_available(model_dir, tmp_path, monkeypatch, command):
    """`--device auto` (the default) puts the model and every batch on CUDA when there is one."""
    import torch

    import fastrlhf.model.hf_io as hf_io

    seen = {}
    real = hf_io.load_model_and_tokenizer

    def spy(path, dtype=torch.float32, device="cpu"):
        seen["device"] = torch.device(device)
        return real(path, dtype=dtype, device="cpu")  # record the choice; train where this machine can
    monkeypatch.setattr(hf_io, "load_model_and_tokenizer", spy)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    data = write_jsonl(tmp_path / "data.jsonl", reversal_rows(8) if command == "sft" else last_digit_pairs(8))
    assert main([command, str(data), "--model", str(model_dir), "--out", str(tmp_path / "out"), "--steps", "1",
                 "--quiet"]) == 0
    assert seen["device"] == torch.device("cuda")


@pytest.mark.skipif("not __import__('torch').cuda.is_available()")
@pytest.mark.parametrize("command", ["sft", "train-rm"])
def test_device_cuda_trains_on_the_gpu(model_dir, tmp_path, command):
    data = write_jsonl(tmp_path / "data.jsonl", reversal_rows(40) if command == "sft" else last_digit_pairs(40))
    out = tmp_path / "out"
    assert main([command, str(data), "--model", str(model_dir), "--out", str(out), "--steps", "3", "--batch-size", "8",
                 "--device", "cuda", "--quiet"]) == 0
    assert load_model(out).config.vocab_size == 20

