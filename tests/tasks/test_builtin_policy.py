"""Guards the shipped starting policy: it loads (ours + transformers) and is as weak as documented."""

import pytest
import torch

from fastrlhf.model.hf_io import load_model
from fastrlhf.model.tokenizer import load_tokenizer
from fastrlhf.rollout.engine import RolloutEngine
from fastrlhf.rollout.sampler import SamplingParams
from fastrlhf.tasks import arithmetic
from fastrlhf.tasks.builtin_policy import BUILTIN_DIGITS, EXPECTED_GREEDY_ACCURACY, builtin_policy_dir


pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def policy():
    path = builtin_policy_dir()
    return load_model(path), load_tokenizer(path)


def test_shipped_files_are_small_and_pickle_free():
    path = builtin_policy_dir()
    assert sum(f.stat().st_size for f in path.iterdir()) < 10_000_000
    assert not list(path.glob("*.bin")) and not list(path.glob("*.pt"))


def test_tokenizer_matches_the_task(policy):
    model, tok = policy
    assert tok.decode(tok.encode_prompt("47+815=")) == "47+815="
    assert model.config.vocab_size == tok.vocab_size
    assert model.config.eos_token_id == tok.eos_token_id


def test_held_out_greedy_accuracy_in_documented_range(policy):
    model, tok = policy
    rows = arithmetic.eval_rows(100, BUILTIN_DIGITS)
    seqs = RolloutEngine(model, num_slots=128).generate(
        [tok.encode_prompt(r["prompt"]) for r in rows],
        SamplingParams(temperature=0, max_new_tokens=8, stop_token_ids=(tok.eos_token_id,)))
    acc = arithmetic.accuracy([tok.decode(s.token_ids) for s in seqs], [r["answer"] for r in rows])
    low, high = EXPECTED_GREEDY_ACCURACY
    assert low <= acc <= high


def test_transformers_loads_it_and_agrees(policy):
    from transformers import AutoModelForCausalLM

    model, tok = policy
    hf = AutoModelForCausalLM.from_pretrained(builtin_policy_dir()).eval()
    ids = torch.tensor([tok.encode_prompt("123+45=") + [tok.encode("1")[0]]])
    with torch.no_grad():
        assert torch.allclose(hf(ids).logits, model(ids), atol=1e-4)
