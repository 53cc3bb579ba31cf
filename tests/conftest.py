import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))  # tests/helpers.py
torch.set_num_threads(min(2, torch.get_num_threads()))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


@pytest.fixture(scope="module")
def single_thread():
    """One intra-op thread for modules of many tiny ops (two threads thrash on a shared 2-core box)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ---- a tiny random policy with the task tokenizer, and a reward it can move (run tests, fuzzing)
@pytest.fixture(scope="session")
def tiny_policy(tmp_path_factory):
    from fastrlhf.model.config import ModelConfig
    from fastrlhf.model.decoder import CausalLM
    from fastrlhf.model.hf_io import copy_tokenizer_files, save_model
    from fastrlhf.model.tokenizer import load_tokenizer
    from fastrlhf.tasks.tokenizer_builder import build_task_tokenizer

    root = tmp_path_factory.mktemp("policy")
    tok_dir = build_task_tokenizer(root / "tok")
    tok = load_tokenizer(tok_dir)
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=tok.vocab_size, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4,
                      num_kv_heads=2, head_dim=8, max_position_embeddings=64, eos_token_id=tok.eos_token_id)
    return save_model(CausalLM(cfg), root / "model", extra_files=copy_tokenizer_files(tok_dir))


@pytest.fixture(scope="session")
def digit_reward(tmp_path_factory):
    """A reward a random policy can move: the number of digits in the completion."""
    path = tmp_path_factory.mktemp("reward") / "digit_reward.py"
    path.write_text("def count(completions, **fields):\n    return [float(sum(ch.isdigit() for ch in c)) for c in completions]\n")
    return f"{path}:count"


