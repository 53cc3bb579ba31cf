"""Workload-aware γ: the expected-tokens formula by hand, and choices under controlled costs."""

import math

import pytest
from helpers import tiny_model_dir

from fastrlhf.model.hf_io import load_model
from fastrlhf.rollout.engine import RolloutEngine
from fastrlhf.rollout.sampler import SamplingParams
from fastrlhf.rollout.speculative.ngram import NGramDrafter
from fastrlhf.rollout.speculative.strategy import AdaptiveSpeculator, batch_bucket, expected_tokens


def test_expected_tokens_by_hand():
    assert expected_tokens(0.0, 4) == 1.0  # nothing accepted: only the sampled token
    assert math.isclose(expected_tokens(0.5, 2), 1 + 0.5 + 0.25)
    assert math.isclose(expected_tokens(0.9, 4), (1 - 0.9 ** 5) / 0.1)
    assert expected_tokens(1.0, 3) == 4.0
    assert [batch_bucket(b) for b in (1, 2, 3, 5, 64, 65)] == [1, 2, 4, 8, 64, 128]


def test_choice_follows_acceptance_and_cost():
    s = AdaptiveSpeculator(NGramDrafter(), gammas=(0, 2, 8))
    for g in (0, 2, 8):  # costs per (bucket 8, T): verification cost grows with T
        s.seconds[(8, 1 + g)] = {0: 1.0, 2: 1.5, 8: 4.0}[g]
    s.alpha = 0.05  # drafts almost never match → plain decoding
    assert s.choose(8) == 0
    s.alpha = 0.7  # E(2) = 2.19 per 1.5 s beats 1 per 1 s and E(8) = 3.2 per 4 s
    assert s.choose(8) == 2
    s.alpha = 0.98  # nearly always right → deep drafts
    assert s.choose(8) == 8
    assert s.choose(3) == 0  # bucket 4 never measured: explore it first


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return load_model(tiny_model_dir(tmp_path_factory.mktemp("m"), "llama", vocab_size=11))


def test_adaptive_run_explores_then_settles_and_never_changes_samples(model):
    prompts = [[1, 2, 3], [4, 5], [6, 7, 8, 9], [3] * 5]
    params = SamplingParams(temperature=0.8, max_new_tokens=30, n=3, seed=2)
    plain = RolloutEngine(model, num_slots=6).generate(prompts, params)
    ticks = iter(range(10**6))
    spec = AdaptiveSpeculator(NGramDrafter(n_max=3), clock=lambda: next(ticks))  # every pass "costs" 1 tick
    fast = RolloutEngine(model, num_slots=6, speculator=spec).generate(prompts, params)
    assert [s.token_ids for s in plain] == [s.token_ids for s in fast]
    assert set(spec.chosen[:5]) == {0, 1, 2, 4, 8}  # each γ tried once for the first bucket
    # with equal costs, any acceptance > 0 favours the deepest draft (other γ only while a new,
    # smaller batch bucket is being explored in the tail)
    assert spec.alpha > 0 and spec.chosen.count(8) > len(spec.chosen) / 2
