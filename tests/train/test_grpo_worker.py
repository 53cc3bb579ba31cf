"""The actor's GRPO update: micro-batching does not change it, and rollout/trainer log-probs agree."""

import copy

import pytest
import torch

from fastrlhf.config import AlgorithmSection
from fastrlhf.dataflow.batch import Batch
from fastrlhf.model.config import ModelConfig
from fastrlhf.model.decoder import CausalLM
from fastrlhf.model.tokenizer import load_tokenizer
from fastrlhf.rollout.engine import RolloutEngine
from fastrlhf.rollout.sampler import SamplingParams
from fastrlhf.tasks import arithmetic
from fastrlhf.tasks.tokenizer_builder import build_task_tokenizer
from fastrlhf.train.reward_workers import RewardWorker
from fastrlhf.train.workers import ActorWorker, ReferenceWorker


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tok = load_tokenizer(build_task_tokenizer(tmp_path_factory.mktemp("tok")))
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=tok.vocab_size, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4,
                      num_kv_heads=2, head_dim=8, max_position_embeddings=64)
    return tok, CausalLM(cfg)


def make_actor(model, tok, micro_batch_size, aggregation="token_mean", temperature=0.8):
    params = SamplingParams(temperature=temperature, top_p=0.95, max_new_tokens=5, n=4, stop_token_ids=(tok.eos_token_id,))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    algo = AlgorithmSection(kl_coef=0.1, loss_aggregation=aggregation)
    return ActorWorker(model, tok, RolloutEngine(model, num_slots=8), params, optimizer, scheduler, algo, micro_batch_size)


def rollout(actor, tok, ref_model):
    rows = arithmetic.train_rows(0, 3, seed=0)
    data = Batch({"prompts": [r["prompt"] for r in rows], "answer": [r["answer"] for r in rows]})
    samples, stats = actor.generate(data)
    batch = data.select(samples["prompt_index"])
    batch = batch.update(samples)
    # a reward that varies within groups, so advantages are non-zero
    batch = batch.update(Batch({"rewards": torch.tensor([float(len(c) % 3) for c in batch["completions"]])}))
    batch = batch.update(ReferenceWorker(ref_model, actor.params, 5).inference(batch))
    return batch, stats


@pytest.mark.parametrize("aggregation", ["token_mean", "sequence_mean"])
def test_micro_batching_does_not_change_the_update(setup, aggregation):
    tok, base = setup
    ref = copy.deepcopy(base)
    a, b = copy.deepcopy(base), copy.deepcopy(base)
    whole, split = make_actor(a, tok, 64, aggregation), make_actor(b, tok, 5, aggregation)
    batch, _ = rollout(whole, tok, ref)
    assert batch["rewards"].std() > 0
    stats_whole = whole.train(batch)
    stats_split = split.train(batch)
    assert abs(stats_whole["loss"] - stats_split["loss"]) <= 1e-6
    moved = max((p - q).abs().max().item() for p, q in zip(a.parameters(), base.parameters()))
    assert moved > 1e-4  # the update did something
    assert max((p - q).abs().max().item() for p, q in zip(a.parameters(), b.parameters())) <= 1e-6


def test_rollout_and_trainer_logprobs_agree(setup):
    tok, base = setup
    model = copy.deepcopy(base)
    actor = make_actor(model, tok, 7, temperature=1.3)
    batch, stats = rollout(actor, tok, copy.deepcopy(base))
    out = actor.train(batch)
    assert out["logprob_diff"] <= 1e-5
    assert stats["response_length"] > 0
    # same weights as the reference, but top-p renormalises the actor's distribution: KL ≥ 0, small
    assert 0 <= out["kl_ref"] < 0.1
    assert actor.policy_version == 1  # the engine takes it at its next generate


def test_reward_worker_passes_fields():
    seen = {}

    def fn(completions, answer, **kw):
        seen.update(answer=answer)
        return [1.0 if c == str(a) else 0.0 for c, a in zip(completions, answer)]

    out = RewardWorker(fn, ("answer",)).inference(Batch({"completions": ["3", "4"], "answer": [3, 5]}))
    assert out["rewards"].tolist() == [1.0, 0.0]
    assert seen["answer"] == [3, 5]
