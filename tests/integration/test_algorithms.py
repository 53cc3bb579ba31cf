"""Every algorithm improves its objective on the built-in preference task (short, seeded runs).

All start from the shipped SFT policy. The RL algorithms optimise the shipped *learned* reward
model: the test asserts that the held-out learned-RM reward of seeded samples rises by a margin and
that the hidden gold reward does not fall (what "humans" prefer; with few steps it rises too).
Offline DPO trains on the shipped preference pairs: its objective is the DPO loss, so the test
asserts that held-out pairs are ranked by the implicit reward β·log(π/π_ref) better than chance,
and that the gold reward of its samples does not fall. Margins are set well below the measured
gains (docs/results.md) so a correct change of numerics does not trip them, while a sign or
masking error (no learning, or learning the wrong way) does.
"""

import pytest
import torch

from fastrlhf.config import load_config
from fastrlhf.dataflow.batch import Batch
from fastrlhf.model.hf_io import load_model
from fastrlhf.tasks import preference
from fastrlhf.tasks.examples import load_preference_pairs
from fastrlhf.train.data import pair_batch
from fastrlhf.train.logprobs import sequence_logprobs
from fastrlhf.train.loop import train
from fastrlhf.train.workers import MODEL_DISTRIBUTION

STEPS = 20
COMMON = ["task.name=preference", f"train.steps={STEPS}", "train.prompts_per_step=8", "train.eval_every=0",
          "train.checkpoint_every=0", "task.eval_size=64"]
RL = {
    "grpo": ["rollout.samples_per_prompt=4"],
    "rloo": ["rollout.samples_per_prompt=4"],
    "reinforce_pp": ["rollout.samples_per_prompt=4", "algorithm.kl_in=reward"],
    "ppo": ["rollout.samples_per_prompt=4", "train.lr=1e-4", "algorithm.critic_lr=1e-3"],
    "online_dpo": ["rollout.samples_per_prompt=4", "train.lr=1e-4"],
}
RM_MARGIN = 0.15  # learned-RM reward (scale ~2-6) must rise at least this much; measured +0.34 to +1.0


@pytest.mark.parametrize("name", list(RL))
def test_rl_algorithm_raises_the_learned_reward(name, tmp_path):
    torch.set_num_threads(2)
    config = load_config(None, [*COMMON, *RL[name], f"algorithm.name={name}", f"train.run_dir={tmp_path / name}"])
    result = train(config, show_progress=False)
    before, after = result.start_eval, result.final_eval
    assert after["eval/reward"] >= before["eval/reward"] + RM_MARGIN, (before, after)
    assert after["eval/gold_reward"] >= before["eval/gold_reward"], (before, after)
    assert after["eval/kl"] > 0


def test_offline_dpo_learns_to_rank_held_out_pairs(tmp_path):
    torch.set_num_threads(2)
    config = load_config(None, [*COMMON, "algorithm.name=dpo", "train.prompts_per_step=64", "train.lr=1e-4",
                                f"train.run_dir={tmp_path / 'dpo'}"])
    result = train(config, show_progress=False)
    policy, reference = load_model(result.final_dir), load_model(preference.policy_dir())
    from fastrlhf.model.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(result.final_dir)
    pairs = pair_batch(load_preference_pairs(preference.pairs_path("eval")), tokenizer)  # 922 held-out pairs
    margin = _implicit_reward(policy, pairs) - _implicit_reward(reference, pairs)  # [2P]
    accuracy = float((margin[0::2] > margin[1::2]).float().mean())
    # measured 0.611 (lr 1e-4; 0.62-0.63 at other settings); chance is 0.5 with a std of 0.016 over 922
    # pairs, a sign error gives < 0.5; the noisy labels cap any ranker at ~0.75 (the shipped RM: 0.725)
    assert accuracy >= 0.56, accuracy
    assert result.final_eval["eval/gold_reward"] >= result.start_eval["eval/gold_reward"]


@torch.no_grad()
def _implicit_reward(model, pairs: Batch) -> torch.Tensor:
    logprobs = sequence_logprobs(model, pairs["sequences"], pairs["attention_mask"], pairs["response_mask"],
                                 MODEL_DISTRIBUTION)
    return logprobs.sum(1)
