"""The clipped policy loss on a hand-worked example (float64, tolerance 1e-7)."""

import functools
import math

import pytest
import torch

from fastrlhf.algorithms.losses.aggregation import sequence_mean, token_sum_norm
from fastrlhf.algorithms.losses.policy import clipped_policy_loss, entropy_from_logits

TOL = dict(atol=1e-7, rtol=0)

# ratios chosen directly: old_logprobs = 0, logprobs = log(ratio)
RATIOS = torch.tensor([[1.5, 0.5, 1.1], [0.5, 1.5, 9.0]], dtype=torch.float64)
MASK = torch.tensor([[1, 1, 1], [1, 1, 0]])      # row 1's last token is padding (its ratio 9 must not count)
ADVANTAGES = torch.tensor([1.0, -2.0], dtype=torch.float64)  # [N]
CLIP = dict(clip_low=0.2, clip_high=0.3)           # asymmetric: range [0.8, 1.3]
# token losses -min(r*A, clip(r)*A):
#   row 0 (A=+1): r=1.5 -> clip 1.3 -> -1.3 (high-clipped);  r=0.5 -> -0.5;  r=1.1 -> -1.1
#   row 1 (A=-2): r=0.5 -> min(-1.0, 0.8*-2=-1.6) -> 1.6 (low-clipped);  r=1.5 -> min(-3.0, -2.6) -> 3.0
TOKEN_LOSSES = [[-1.3, -0.5, -1.1], [1.6, 3.0]]


def run(**kwargs):
    logprobs = torch.log(RATIOS).requires_grad_(True)
    loss, stats = clipped_policy_loss(logprobs, torch.zeros_like(RATIOS), ADVANTAGES, MASK, **CLIP, **kwargs)
    loss.backward()
    return loss, stats, logprobs.grad


def test_token_mean_loss_stats_and_gradient():
    loss, stats, grad = run()
    # (-1.3 - 0.5 - 1.1 + 1.6 + 3.0) / 5 tokens = 1.7 / 5
    torch.testing.assert_close(loss, torch.tensor(0.34, dtype=torch.float64), **TOL)
    assert stats["loss"] == pytest.approx(0.34, abs=1e-7)
    assert stats["policy_loss"] == pytest.approx(0.34, abs=1e-7)
    assert stats["ratio"] == pytest.approx((1.5 + 0.5 + 1.1 + 0.5 + 1.5) / 5, abs=1e-7)  # 1.02
    assert stats["clip_fraction"] == pytest.approx(2 / 5, abs=1e-7)
    assert stats["clip_fraction_low"] == pytest.approx(1 / 5, abs=1e-7)
    assert stats["clip_fraction_high"] == pytest.approx(1 / 5, abs=1e-7)
    # approx_kl = mean((r - 1) - ln r): 0.094535 + 0.193147 + 0.004690 + 0.193147 + 0.094535 = 0.580054; / 5
    approx_kl = sum((r - 1) - math.log(r) for r in (1.5, 0.5, 1.1, 0.5, 1.5)) / 5
    assert stats["approx_kl"] == pytest.approx(approx_kl, abs=1e-7)
    assert "kl_ref" not in stats and "entropy" not in stats
    # d loss / d logp = -A * r / 5 on unclipped tokens, 0 on clipped and padded ones
    expected_grad = torch.tensor([[0.0, -0.5 / 5, -1.1 / 5], [0.0, 2 * 1.5 / 5, 0.0]], dtype=torch.float64)
    torch.testing.assert_close(grad, expected_grad, **TOL)


def test_sequence_mean_and_dr_grpo_aggregation():
    loss, _, grad = run(aggregation="sequence_mean")
    # row means: -2.9/3 = -0.966667 and 4.6/2 = 2.3; mean of rows = 1.333333/2
    torch.testing.assert_close(loss, torch.tensor((-2.9 / 3 + 2.3) / 2, dtype=torch.float64), **TOL)
    # gradient weights: row 0 tokens 1/(2*3), row 1 tokens 1/(2*2)
    expected_grad = torch.tensor([[0.0, -0.5 / 6, -1.1 / 6], [0.0, 3.0 / 4, 0.0]], dtype=torch.float64)
    torch.testing.assert_close(grad, expected_grad, **TOL)
    loss, _, _ = run(aggregation="token_sum_norm")  # 1.7 / (N=2 * T=3)
    torch.testing.assert_close(loss, torch.tensor(1.7 / 6, dtype=torch.float64), **TOL)
    loss, _, _ = run(aggregation=functools.partial(token_sum_norm, max_tokens=10))  # 1.7 / (2 * 10)
    torch.testing.assert_close(loss, torch.tensor(0.085, dtype=torch.float64), **TOL)
    with pytest.raises(ValueError, match="unknown loss aggregation"):
        run(aggregation="mean")


def test_k3_kl_to_reference_value_sign_and_gradient():
    logprobs = torch.full((1, 3), -1.0, dtype=torch.float64, requires_grad=True)
    # x = ref - logp = ln 2, ln 0.25, and 5 on a padded token
    ref = torch.tensor([[-1 + math.log(2), -1 + math.log(0.25), 4.0]], dtype=torch.float64)
    mask = torch.tensor([[1, 1, 0]])
    loss, stats = clipped_policy_loss(logprobs, logprobs.detach(), torch.zeros(1, dtype=torch.float64), mask,
                                      ref_logprobs=ref, kl_coef=0.1)
    loss.backward()
    # k3 = e^x - x - 1: 2 - 0.693147 - 1 = 0.306853 ; 0.25 + 1.386294 - 1 = 0.636294 ; mean 0.471574
    # (the reversed sign, x = logp - ref, would give 0.193147 and 1.613706 -> mean 0.903426)
    kl = ((2 - math.log(2) - 1) + (0.25 - math.log(0.25) - 1)) / 2
    assert stats["kl_ref"] == pytest.approx(kl, abs=1e-7)
    torch.testing.assert_close(loss, torch.tensor(0.1 * kl, dtype=torch.float64), **TOL)
    assert stats["policy_loss"] == pytest.approx(0.0, abs=1e-12)
    # d k3 / d logp = 1 - e^x: -1 and 0.75, times kl_coef / 2 tokens
    torch.testing.assert_close(logprobs.grad, torch.tensor([[-0.05, 0.0375, 0.0]], dtype=torch.float64), **TOL)


def test_entropy_is_a_masked_token_mean():
    uniform = torch.zeros(4, dtype=torch.float64)                                   # H = ln 4 = 1.386294
    skewed = torch.log(torch.tensor([0.5, 0.25, 0.125, 0.125], dtype=torch.float64))  # H = 1.75 ln 2 = 1.213008
    peaked = torch.tensor([100.0, 0.0, 0.0, 0.0], dtype=torch.float64)              # H ~ 0, padded position
    logits = torch.stack([uniform, skewed, peaked])[None]  # [1, 3, 4]
    torch.testing.assert_close(entropy_from_logits(logits)[0, :2],
                               torch.tensor([math.log(4), 1.75 * math.log(2)], dtype=torch.float64), **TOL)
    zeros = torch.zeros(1, 3, dtype=torch.float64)
    _, stats = clipped_policy_loss(zeros, zeros, torch.ones(1, dtype=torch.float64), torch.tensor([[1, 1, 0]]),
                                   logits=logits)
    assert stats["entropy"] == pytest.approx((math.log(4) + 1.75 * math.log(2)) / 2, abs=1e-7)  # 1.299651


def test_sequence_mean_skips_rows_without_tokens_and_shapes_are_checked():
    values = torch.tensor([[1.0, 2.0], [5.0, 5.0]])
    assert sequence_mean(values, torch.tensor([[1, 1], [0, 0]])).item() == pytest.approx(1.5)
    logprobs = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="advantages"):
        clipped_policy_loss(logprobs, logprobs, torch.zeros(3), torch.ones(2, 3))
    with pytest.raises(ValueError, match="must all be"):
        clipped_policy_loss(logprobs, torch.zeros(2, 4), torch.zeros(2), torch.ones(2, 3))


def test_tis_weights_truncate_and_ignore_masked_or_filtered_tokens():
    from fastrlhf.algorithms.losses.policy import tis_weights

    old = torch.tensor([[-1.0, -2.0, float("-inf"), -0.5]])
    rollout = torch.tensor([[-1.5, -1.0, -1.0, float("nan")]])
    mask = torch.tensor([[1, 1, 1, 0]])
    w = tis_weights(old, rollout, mask, cap=1.5)
    assert torch.allclose(w, torch.tensor([[1.5, float(torch.tensor(-1.0).exp()), 1.0, 1.0]]))
    assert not w.requires_grad


def test_token_weights_scale_the_policy_term_only():
    logp = torch.tensor([[-1.0, -1.2]], requires_grad=True)
    old = torch.tensor([[-1.1, -1.0]])
    adv = torch.tensor([1.0])
    mask = torch.ones(1, 2)
    ref = torch.tensor([[-0.9, -1.3]])
    plain, _ = clipped_policy_loss(logp, old, adv, mask, ref_logprobs=ref, kl_coef=0.1)
    weighted, stats = clipped_policy_loss(logp, old, adv, mask, ref_logprobs=ref, kl_coef=0.1,
                                          token_weights=torch.tensor([[2.0, 2.0]]))
    no_kl, _ = clipped_policy_loss(logp, old, adv, mask)
    assert float(weighted) == pytest.approx(float(plain) + float(no_kl))  # policy part doubled, KL part once
    assert stats["tis_weight"] == pytest.approx(2.0)
