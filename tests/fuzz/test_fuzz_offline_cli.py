"""Fuzzed data files through the commands that write a model: `fastrlhf sft` and `fastrlhf train-rm`.

Property: with any DATA file, `fastrlhf sft DATA --model DIR --out OUT` (and `train-rm`) either exits 0
with OUT a complete model directory, or exits 2 with one `fastrlhf: error: ...` line naming the file
and leaves OUT absent (no temporary directory beside it either).
"""

from __future__ import annotations

import itertools
import shutil

import pytest
from hypothesis import given

from fuzzing import fuzz_settings, record
from fastrlhf.cli import main
from fastrlhf.tasks.tokenizer_builder import build_task_tokenizer
from helpers import tiny_model_dir
from test_fuzz_jsonl import file_strategy

pytestmark = [pytest.mark.usefixtures("single_thread"),
              pytest.mark.filterwarnings("ignore::hypothesis.errors.HypothesisWarning")]
counter = itertools.count()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tiny_model_dir(tmp_path_factory.mktemp("models"), vocab_size=20, pad_token_id=0, bos_token_id=1,
                          eos_token_id=2, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                          num_attention_heads=2, num_key_value_heads=1)
    build_task_tokenizer(path)
    return path


def _run(command: str, content: bytes, model_dir, fuzz_dir, capsys) -> None:
    data = fuzz_dir / f"{command}-{next(counter)}.jsonl"
    data.write_bytes(content)
    out = fuzz_dir / f"out-{next(counter)}"
    capsys.readouterr()
    rc = main([command, str(data), "--model", str(model_dir), "--out", str(out), "--steps", "1", "--batch-size", "4",
               "--eval-fraction", "0", "--device", "cpu", "--quiet"])
    captured = capsys.readouterr()
    kind = f"{command} DATA.jsonl through the CLI (OUT all or nothing)"
    if rc == 0:
        assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in out.iterdir()}
        shutil.rmtree(out)
        record(kind, "ok")
    else:
        lines = captured.err.splitlines()
        assert rc == 2 and len(lines) == 1 and lines[0].startswith("fastrlhf: error: ") and str(data) in lines[0], \
            captured.err
        assert not out.exists(), f"{out} left behind after: {captured.err}"
        record(kind, "error")
    assert not [p for p in fuzz_dir.iterdir() if p.name.startswith(".out-")], "temporary directories left behind"
    data.unlink()


@fuzz_settings(max_examples=15)
@given(content=file_strategy(("prompt", "response")))
def test_sft_on_fuzzed_data_writes_all_or_nothing(model_dir, fuzz_dir, capsys, content):
    _run("sft", content, model_dir, fuzz_dir, capsys)


@fuzz_settings(max_examples=15)
@given(content=file_strategy(("prompt", "chosen", "rejected")))
def test_train_rm_on_fuzzed_pairs_writes_all_or_nothing(model_dir, fuzz_dir, capsys, content):
    _run("train-rm", content, model_dir, fuzz_dir, capsys)
