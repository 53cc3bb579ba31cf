"""Actor updates of every algorithm, the PPO critic, and DPO pairs: micro-batching does not change an
update, and one update moves the policy the way its objective says."""

import copy

import pytest
import torch

from fastrlhf.config import AlgorithmSection
from fastrlhf.dataflow.batch import Batch
from fastrlhf.model.config import ModelConfig
from fastrlhf.model.decoder import CausalLM
from fastrlhf.model.heads import with_score_head
from fastrlhf.model.tokenizer import load_tokenizer
from fastrlhf.rollout.engine import RolloutEngine
from fastrlhf.rollout.sampler import SamplingParams
from fastrlhf.tasks import arithmetic
from fastrlhf.tasks.tokenizer_builder import build_task_tokenizer
from fastrlhf.train.critic import CriticWorker, token_values
from fastrlhf.train.data import pair_batch
from fastrlhf.train.logprobs import sequence_logprobs
from fastrlhf.train.workers import ActorWorker, ReferenceWorker


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tok = load_tokenizer(build_task_tokenizer(tmp_path_factory.mktemp("tok")))
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=tok.vocab_size, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4,
                      num_kv_heads=2, head_dim=8, max_position_embeddings=64)
    return tok, CausalLM(cfg)


def make_actor(model, tok, name, micro_batch_size=64, lr=0.5, **options):
    params = SamplingParams(temperature=1.0, max_new_tokens=5, n=4, stop_token_ids=(tok.eos_token_id,))
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    algo = AlgorithmSection(name=name, kl_coef=options.pop("kl_coef", 0.05), **options)
    return ActorWorker(model, tok, RolloutEngine(model, num_slots=16), params, optimizer, scheduler, algo, micro_batch_size)


def rollout(actor, tok, ref_model, critic=None):
    rows = arithmetic.train_rows(0, 4, seed=0)
    data = Batch({"prompts": [r["prompt"] for r in rows]})
    samples, _ = actor.generate(data)
    batch = data.select(samples["prompt_index"]).update(samples)
    batch = batch.update({"rewards": torch.tensor([float(len(c) % 3) for c in batch["completions"]])})
    batch = batch.update(ReferenceWorker.for_actor(ref_model, actor, 5).inference(batch))
    if critic is not None:
        batch = batch.update(critic.inference(batch))
    return batch


def make_critic(policy, micro_batch_size=64, **options):
    model = with_score_head(policy, seed=1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    return CriticWorker(model, optimizer, scheduler, AlgorithmSection(name="ppo", **options), micro_batch_size)


def max_gap(a, b):
    return max((p - q).abs().max().item() for p, q in zip(a.parameters(), b.parameters()))


@pytest.mark.parametrize("name", ["rloo", "reinforce_pp", "ppo", "online_dpo"])
def test_micro_batching_does_not_change_the_update(setup, name):
    tok, base = setup
    a, b = copy.deepcopy(base), copy.deepcopy(base)
    whole, split = make_actor(a, tok, name, 64), make_actor(b, tok, name, 5)
    critic = make_critic(base) if name == "ppo" else None
    batch = rollout(whole, tok, copy.deepcopy(base), critic)
    stats_whole, stats_split = whole.train(batch), split.train(batch)
    assert abs(stats_whole["loss"] - stats_split["loss"]) <= 1e-6
    assert max_gap(a, base) > 1e-4  # the update did something
    assert max_gap(a, b) <= 1e-6


def test_policy_gradient_raises_logprob_of_better_samples(setup):
    """After one RLOO update, log π rises on samples with a positive advantage and falls on negative ones."""
    tok, base = setup
    model = copy.deepcopy(base)
    actor = make_actor(model, tok, "rloo", lr=0.05, kl_coef=0.0)
    batch = rollout(actor, tok, copy.deepcopy(base))
    before = sequence_logprobs(model, batch["sequences"], batch["attention_mask"], batch["response_mask"], actor.params).sum(1)
    advantages = actor.objective.prepare(batch)["advantages"].sum(1)
    actor.train(batch)
    after = sequence_logprobs(model, batch["sequences"], batch["attention_mask"], batch["response_mask"], actor.params).sum(1)
    moved = (after - before).detach()
    significant = advantages.abs() > 0.5
    assert significant.sum() >= 4
    agree = (torch.sign(moved[significant]) == torch.sign(advantages[significant])).float().mean()
    assert agree >= 0.8


def test_online_dpo_widens_the_margin_of_its_pairs(setup):
    tok, base = setup
    model = copy.deepcopy(base)
    actor = make_actor(model, tok, "online_dpo", lr=0.05)
    batch = rollout(actor, tok, copy.deepcopy(base))
    pairs = actor.objective.prepare(batch)
    rewards = pairs["rewards"]
    assert len(pairs) >= 4 and bool((rewards[0::2] > rewards[1::2]).all())  # chosen = max, rejected = min

    @torch.no_grad()
    def margin():
        lp = sequence_logprobs(model, pairs["sequences"], pairs["attention_mask"], pairs["response_mask"],
                               actor.train_params).sum(1)
        return float((lp[0::2] - lp[1::2]).mean())

    before = margin()
    stats = actor.train(batch)
    assert margin() > before + 1e-3
    assert stats["pairs"] == len(pairs) // 2


def test_offline_dpo_pairs_are_interleaved_and_micro_batching_is_exact(setup):
    tok, base = setup
    rows = [{"prompt": "12+3=", "chosen": "15", "rejected": "16"}, {"prompt": "4+4=", "chosen": "8", "rejected": "88"},
            {"prompt": "7+1=", "chosen": "8", "rejected": "9"}]
    batch = pair_batch(rows, tok)
    assert len(batch) == 6
    eos = tok.eos_token_id
    first = batch["sequences"][0][batch["response_mask"][0].bool()].tolist()
    assert first == tok.encode("15") + [eos]
    second = batch["sequences"][1][batch["response_mask"][1].bool()].tolist()
    assert second == tok.encode("16") + [eos]
    a, b = copy.deepcopy(base), copy.deepcopy(base)
    whole, split = make_actor(a, tok, "dpo", 64), make_actor(b, tok, "dpo", 3)  # 3 rows -> rounded to one pair
    batch = batch.update(ReferenceWorker.for_actor(copy.deepcopy(base), whole, 4).inference(batch))
    stats_whole, stats_split = whole.train(batch), split.train(batch)
    assert abs(stats_whole["loss"] - stats_split["loss"]) <= 1e-6
    assert max_gap(a, b) <= 1e-6 and max_gap(a, base) > 1e-4


def test_critic_values_are_aligned_with_tokens(setup):
    tok, base = setup
    critic = make_critic(base)
    seq = torch.tensor([[1, 5, 6, 7, 2, 0]])
    attention = torch.tensor([[1, 1, 1, 1, 1, 0]])
    response = torch.tensor([[0, 0, 1, 1, 1, 0]])
    values = token_values(critic.model, seq, attention, response)
    raw = critic.model.values(critic.model.forward_hidden(seq, attention))  # value after each token
    # position t holds V(state before token t) = the head on the hidden state of token t-1
    assert torch.allclose(values[0, 2:5], raw[0, 1:4])
    assert values[0, [0, 1, 5]].abs().max() == 0


def test_critic_regresses_towards_returns_and_micro_batching_is_exact(setup):
    tok, base = setup
    actor = make_actor(copy.deepcopy(base), tok, "ppo")
    whole, split = make_critic(base, 64), make_critic(base, 3)
    batch = rollout(actor, tok, copy.deepcopy(base), whole)
    first = whole.train(batch)
    split.train(batch)
    assert max_gap(whole.model, split.model) <= 1e-6
    for _ in range(10):
        batch = batch.update(whole.inference(batch))
        last = whole.train(batch)
    assert last["critic/value_loss"] < 0.5 * first["critic/value_loss"]


def test_frozen_actor_waits_while_the_critic_warms_up(setup):
    tok, base = setup
    model = copy.deepcopy(base)
    actor = make_actor(model, tok, "ppo", freeze_actor_steps=1)
    batch = rollout(actor, tok, copy.deepcopy(base), make_critic(base))
    actor.step = 0
    assert actor.train(batch)["actor_frozen"] == 1.0 and max_gap(model, base) == 0.0
    actor.step = 1
    assert "actor_frozen" not in actor.train(batch) and max_gap(model, base) > 1e-4
