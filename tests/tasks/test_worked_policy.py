"""Guards the worked_addition task's shipped starting policy: it loads, its greedy traces are mostly
well-formed, it is as weak as documented, and `fastrlhf eval --task worked_addition` reports on it."""

import re

import pytest
import torch

from fastrlhf.cli import main
from fastrlhf.model.hf_io import load_model
from fastrlhf.model.tokenizer import load_tokenizer
from fastrlhf.rollout.engine import RolloutEngine
from fastrlhf.rollout.sampler import SamplingParams
from fastrlhf.tasks import worked_addition
from fastrlhf.tasks.builtin_policy import WORKED_EXPECTED_GREEDY_ACCURACY, worked_policy_dir

pytestmark = pytest.mark.usefixtures("single_thread")

WELL_FORMED_AT_LEAST = 0.9  # measured 0.98 on these 50 (0.99 on 200): docs/LOG.md ("worked_addition")


@pytest.fixture(scope="module")
def greedy():
    """(policy, tokenizer, held-out rows, greedy completions) on 50 held-out prompts."""
    path = worked_policy_dir()
    model, tok = load_model(path), load_tokenizer(path)
    rows = worked_addition.eval_rows(50)
    seqs = RolloutEngine(model, num_slots=64).generate(
        [tok.encode_prompt(r["prompt"]) for r in rows],
        SamplingParams(temperature=0, max_new_tokens=worked_addition.DEFAULT_MAX_NEW_TOKENS,
                       stop_token_ids=(tok.eos_token_id,)))
    return model, tok, rows, [tok.decode(s.token_ids) for s in seqs]


def test_shipped_files_are_small_pickle_free_and_long_enough():
    path = worked_policy_dir()
    assert sum(f.stat().st_size for f in path.iterdir()) < 10_000_000
    assert not list(path.glob("*.bin")) and not list(path.glob("*.pt"))
    model = load_model(path)
    longest_prompt = len(load_tokenizer(path).encode_prompt("99999999+99999999="))
    assert model.config.max_position_embeddings >= longest_prompt + worked_addition.DEFAULT_MAX_NEW_TOKENS


def test_greedy_traces_are_mostly_well_formed(greedy):
    _, _, _, completions = greedy
    formed = sum(map(worked_addition.is_well_formed, completions)) / len(completions)
    assert formed >= WELL_FORMED_AT_LEAST, completions[:5]


def test_greedy_accuracy_is_partial(greedy):
    _, _, rows, completions = greedy
    accuracy = worked_addition.accuracy(completions, [r["answer"] for r in rows])
    low, high = WORKED_EXPECTED_GREEDY_ACCURACY  # measured on 200 prompts; 50 here: a wider band
    assert low - 0.1 <= accuracy <= high + 0.1


def test_transformers_loads_it_and_agrees(greedy):
    from transformers import AutoModelForCausalLM

    model, tok, _, _ = greedy
    hf = AutoModelForCausalLM.from_pretrained(worked_policy_dir()).eval()
    ids = torch.tensor([tok.encode_prompt("123+45=") + tok.encode("3+5+0=8")])
    with torch.no_grad():
        assert torch.allclose(hf(ids).logits, model(ids), atol=1e-4)


def test_eval_cli_reports_accuracy_and_length(capsys):
    assert main(["eval", str(worked_policy_dir()), "--task", "worked_addition", "--eval-size", "20"]) == 0
    out = capsys.readouterr().out
    accuracy = float(re.search(r"held-out accuracy ([0-9.]+)", out).group(1))
    length = float(re.search(r"mean response length ([0-9.]+)", out).group(1))
    assert 0.0 < accuracy < 1.0 and 10 < length < worked_addition.DEFAULT_MAX_NEW_TOKENS


def test_every_builtin_task_has_a_source_and_a_policy():
    from fastrlhf.config import load_config
    from fastrlhf.tasks import BUILTIN_TASKS
    from fastrlhf.train.data import BUILTIN_SOURCES, prompt_source
    from fastrlhf.train.build import BUILTIN_POLICIES, model_directory

    assert set(BUILTIN_SOURCES) == set(BUILTIN_POLICIES) == set(BUILTIN_TASKS)
    config = load_config(None, ["task.name=worked_addition", "task.eval_size=10"])
    assert model_directory(config) == worked_policy_dir()
    source = prompt_source(config.task, seed=0)
    assert source.name == "worked_addition" and source.eval_rows == worked_addition.eval_rows(10)
    assert source.rows_at(5, 3) == worked_addition.train_rows(5, 3, seed=0)
    config = load_config(None, ["task.name=worked_addition", "task.digits=[2]", "task.eval_size=10"])
    assert all(len(r["prompt"]) == 6 for r in prompt_source(config.task, seed=0).rows_at(0, 20))
