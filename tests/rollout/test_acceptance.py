"""The acceptance rules on hand-made logits: edge cases of min(1, p/q) + residual, and the one-step
distribution of the committed token (= p) over many independent rows."""

import torch

from fastrlhf.rollout.sampler import SamplingParams, sample, sampling_logprobs, uniforms
from fastrlhf.rollout.speculative.acceptance import accept_by_comparison, accept_by_rejection, inverse_cdf

PARAMS = SamplingParams(temperature=0.8, top_k=4)


def rows(B, T, V, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(B, T, V, generator=g) * 2
    return logits, torch.arange(B) * 7 + 3, torch.randint(0, 5, (B,), generator=g)  # logits, seeds, counters


def test_draft_equal_to_target_is_always_accepted_and_the_bonus_is_the_plain_draw():
    logits, seeds, counters = rows(64, 4, 9)
    q = sampling_logprobs(logits[:, :3], PARAMS).exp()  # q = p exactly
    drafts = torch.multinomial(q.reshape(-1, 9), 1).view(64, 3)
    y, logp, n = accept_by_rejection(logits, drafts, torch.full((64,), 3), q, PARAMS, seeds, counters)
    assert (n == 4).all() and (y[:, :3] == drafts).all()
    bonus, bonus_logp = sample(logits[:, 3], PARAMS, uniforms(seeds, counters + 3))
    assert (y[:, 3] == bonus).all() and torch.allclose(logp[:, 3], bonus_logp)
    assert torch.allclose(logp, sampling_logprobs(logits, PARAMS).gather(-1, y[..., None]).squeeze(-1))


def test_a_draft_the_target_filters_out_is_always_rejected():
    logits, seeds, counters = rows(64, 3, 9, seed=1)
    logp = sampling_logprobs(logits, PARAMS)
    drafts = logp[:, :2].argmin(-1)  # outside the top-4: p = 0
    q = torch.full((64, 2, 9), 1 / 9)
    y, out_logp, n = accept_by_rejection(logits, drafts, torch.full((64,), 2), q, PARAMS, seeds, counters)
    assert (n == 1).all() and (y[:, 0] != drafts[:, 0]).all() and torch.isfinite(out_logp[:, 0]).all()


def test_shorter_drafts_stop_at_their_length():
    logits, seeds, counters = rows(8, 4, 9, seed=2)
    q = sampling_logprobs(logits[:, :3], PARAMS).exp()
    drafts = q.argmax(-1)
    lengths = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])
    _, _, n = accept_by_rejection(logits, drafts, lengths, q, PARAMS, seeds, counters)
    assert (n <= lengths + 1).all()
    y0, _, n0 = accept_by_comparison(logits, drafts, torch.zeros(8, dtype=torch.long), PARAMS, seeds, counters)
    assert (n0 == 1).all() and (y0[:, 0] == sample(logits[:, 0], PARAMS, uniforms(seeds, counters))[0]).all()


def test_the_committed_first_token_is_distributed_as_p():
    """One position, 200 000 independent rows: the committed token's frequencies match p within
    4.5 σ per token, although drafts come from a very different q (half rejected)."""
    B, V = 200_000, 6
    params = SamplingParams(temperature=0.7, top_p=0.9)
    logits = torch.tensor([[2.0, 1.0, 0.5, 0.0, -1.0, -3.0], [0.0] * V]).expand(B, 2, V)
    p = sampling_logprobs(logits[0, 0], params).double().exp()
    q_row = torch.tensor([0.05, 0.1, 0.15, 0.2, 0.25, 0.25])
    q = q_row.expand(B, 1, V)
    drafts = torch.multinomial(q_row, B, replacement=True, generator=torch.Generator().manual_seed(3))[:, None]
    y, _, n = accept_by_rejection(logits, drafts, torch.ones(B, dtype=torch.long), q, params,
                                  torch.arange(B), torch.zeros(B, dtype=torch.long))
    freq = torch.bincount(y[:, 0], minlength=V).double() / B
    sigma = (p * (1 - p) / B).sqrt().clamp(min=1e-12)
    assert ((freq - p).abs() <= 4.5 * sigma).all(), (freq, p)
    expected_acceptance = torch.minimum(p, q_row.double()).sum()  # Σ min(p, q) = 1 − TV(p, q)
    assert abs((n == 2).double().mean() - expected_acceptance) < 0.01


def test_inverse_cdf_never_returns_a_zero_weight_token():
    probs = torch.tensor([[0.0, 0.5, 0.0, 0.5], [0.0, 0.0, 1.0, 0.0]], dtype=torch.float64)
    for u in (1e-12, 0.5, 1 - 1e-16):
        t = inverse_cdf(probs, torch.full((2,), u, dtype=torch.float64))
        assert probs.gather(-1, t[:, None]).gt(0).all()
