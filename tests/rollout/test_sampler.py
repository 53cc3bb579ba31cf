"""Sampler: filtered distributions by hand, inverse-CDF draws follow π, counter-based uniforms."""

import math

import torch

from fastrlhf.rollout.sampler import SamplingParams, sample, sampling_logprobs, uniforms

LOGITS = torch.log(torch.tensor([[0.4, 0.3, 0.2, 0.1]]))


def test_temperature_top_k_top_p_by_hand():
    p = sampling_logprobs(LOGITS, SamplingParams(temperature=1.0)).exp()
    assert torch.allclose(p, torch.tensor([[0.4, 0.3, 0.2, 0.1]]), atol=1e-6)
    # T = 0.5 squares the probabilities: 0.16, 0.09, 0.04, 0.01 → / 0.30
    p = sampling_logprobs(LOGITS, SamplingParams(temperature=0.5)).exp()
    assert torch.allclose(p, torch.tensor([[0.16, 0.09, 0.04, 0.01]]) / 0.30, atol=1e-6)
    # top-k 2: 0.4, 0.3 → 4/7, 3/7
    p = sampling_logprobs(LOGITS, SamplingParams(top_k=2)).exp()
    assert torch.allclose(p, torch.tensor([[4 / 7, 3 / 7, 0, 0]]), atol=1e-6)
    # top-p 0.75: 0.4 (before 0) and 0.3 (before 0.4) kept; 0.2 has 0.7 before it → kept; 0.1 has 0.9 → dropped
    p = sampling_logprobs(LOGITS, SamplingParams(top_p=0.75)).exp()
    assert torch.allclose(p, torch.tensor([[0.4, 0.3, 0.2, 0]]) / 0.9, atol=1e-6)
    # top-p 0.7 exactly: 0.2 has 0.7 of mass before it → dropped
    p = sampling_logprobs(LOGITS, SamplingParams(top_p=0.7)).exp()
    assert torch.allclose(p, torch.tensor([[0.4, 0.3, 0, 0]]) / 0.7, atol=1e-6)


def test_draws_follow_the_sampling_distribution():
    n = 40_000
    params = SamplingParams(temperature=0.5, top_p=0.99)
    logits = LOGITS.expand(n, 4)
    tokens, logprobs = sample(logits, params, uniforms(torch.arange(n), torch.zeros(n, dtype=torch.long)))
    want = torch.tensor([0.16, 0.09, 0.04, 0.01]) / 0.30
    freq = torch.bincount(tokens, minlength=4).double() / n
    sigma = (want * (1 - want) / n).sqrt()
    assert ((freq - want).abs() < 5 * sigma + 1e-9).all(), (freq, want)
    assert torch.allclose(logprobs, want.log()[tokens].float(), atol=1e-6)


def test_uniforms_are_uniform_and_counter_based():
    seeds = torch.arange(50_000)
    u = uniforms(seeds, torch.full_like(seeds, 3))
    assert 0 < u.min() and u.max() < 1
    assert abs(u.mean().item() - 0.5) < 0.01 and abs(u.var().item() - 1 / 12) < 0.005
    # same (seed, counter) → same value regardless of what else is in the batch
    assert uniforms(torch.tensor([777]), torch.tensor([3])).item() == u[777].item()
    # streams and counters decorrelate
    v = uniforms(seeds, torch.full_like(seeds, 4))
    assert abs(torch.corrcoef(torch.stack([u, v]))[0, 1].item()) < 0.02
    assert not torch.equal(uniforms(seeds, seeds * 0, stream=1), uniforms(seeds, seeds * 0, stream=0))


def test_greedy_picks_argmax_with_unfiltered_logprob():
    tokens, lp = sample(LOGITS, SamplingParams(temperature=0), torch.tensor([0.99]))
    assert tokens.item() == 0 and math.isclose(lp.item(), math.log(0.4), rel_tol=1e-6)
