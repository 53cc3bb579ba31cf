"""Advantage estimators on hand-worked examples (float64, tolerance 1e-6 or tighter)."""

import math

import pytest
import torch

from fastrlhf.algorithms.advantages import (
    ADVANTAGE_ESTIMATORS,
    AdvantageInputs,
    grpo_advantages,
    reinforce_pp_advantages,
    rloo_advantages,
)
from fastrlhf.algorithms.objectives import OBJECTIVES, PolicyGradient
from fastrlhf.config import ALGORITHMS, AlgorithmSection

# Two prompts, three samples each, interleaved and with non-contiguous ids:
#   group 7: rewards 1, 2, 3 -> mean 2,   sample std sqrt((1+0+1)/2) = 1
#   group 3: rewards 0, 0, 4 -> mean 4/3, deviations -4/3, -4/3, 8/3,
#            sample std sqrt((16/9+16/9+64/9)/2) = sqrt(16/3) = 4/sqrt(3) = 2.3094011
REWARDS = torch.tensor([1.0, 0.0, 2.0, 0.0, 3.0, 4.0], dtype=torch.float64)
GROUPS = torch.tensor([7, 3, 7, 3, 7, 3])
EPS = 1e-6
STD_B = 4 / math.sqrt(3)


def test_grpo_normalises_within_each_group_with_sample_std():
    expected = torch.tensor([
        -1 / (1 + EPS), (-4 / 3) / (STD_B + EPS),
        0.0, (-4 / 3) / (STD_B + EPS),
        1 / (1 + EPS), (8 / 3) / (STD_B + EPS),
    ], dtype=torch.float64)  # = [-1, -0.57735, 0, -0.57735, 1, 1.154701] up to eps
    # population std (n instead of n-1) would give +-1.2247 for group 7: this test would fail
    torch.testing.assert_close(grpo_advantages(REWARDS, GROUPS), expected, atol=1e-7, rtol=0)


def test_grpo_accepts_groups_by_samples_matrix():
    rewards = torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 4.0]], dtype=torch.float64)  # [G=2, n=3]
    expected = torch.tensor([[-1 / (1 + EPS), 0.0, 1 / (1 + EPS)],
                             [(-4 / 3) / (STD_B + EPS), (-4 / 3) / (STD_B + EPS), (8 / 3) / (STD_B + EPS)]],
                            dtype=torch.float64)
    torch.testing.assert_close(grpo_advantages(rewards), expected, atol=1e-7, rtol=0)


def test_dr_grpo_only_subtracts_the_group_mean():
    expected = torch.tensor([-1.0, -4 / 3, 0.0, -4 / 3, 1.0, 8 / 3], dtype=torch.float64)
    torch.testing.assert_close(grpo_advantages(REWARDS, GROUPS, normalize_std=False), expected, atol=1e-7, rtol=0)


def test_grpo_degenerate_groups_get_zero_advantage():
    rewards = torch.tensor([5.0, 2.0, 2.0], dtype=torch.float64)  # group 0 has one sample, group 1 ties
    out = grpo_advantages(rewards, torch.tensor([0, 1, 1]))
    assert out.tolist() == [0.0, 0.0, 0.0]


def test_rloo_uses_the_mean_of_the_other_samples():
    # group 7: 1-(2+3)/2 = -1.5, 2-(1+3)/2 = 0, 3-(1+2)/2 = 1.5
    # group 3: 0-(0+4)/2 = -2,   0-(0+4)/2 = -2, 4-(0+0)/2 = 4
    expected = torch.tensor([-1.5, -2.0, 0.0, -2.0, 1.5, 4.0], dtype=torch.float64)
    torch.testing.assert_close(rloo_advantages(REWARDS, GROUPS), expected, atol=1e-9, rtol=0)
    with pytest.raises(ValueError, match="at least 2 samples"):
        rloo_advantages(torch.tensor([1.0, 2.0]), torch.tensor([0, 1]))


def test_reinforce_pp_returns_with_kl_and_masked_whitening():
    # position 0 is the prompt, later zeros are padding; the 9s sit off the response and must be ignored
    mask = torch.tensor([[0, 1, 1, 0], [0, 1, 1, 1]])
    token_kl = torch.tensor([[9.0, 0.1, 0.2, 9.0], [9.0, 0.0, 0.3, 0.1]], dtype=torch.float64)
    rewards = torch.tensor([1.0, 0.0], dtype=torch.float64)
    # kl_coef 0.5 -> token rewards row 0: t1 -0.05, t2 1-0.1 = 0.9;  row 1: t1 0, t2 -0.15, t3 -0.05
    # returns (gamma 1): row 0: t1 0.85, t2 0.9;  row 1: t1 -0.2, t2 -0.2, t3 -0.05
    # mean over the 5 response tokens = 1.3/5 = 0.26; deviations 0.59 0.64 -0.46 -0.46 -0.31
    # population variance = (0.3481+0.4096+0.2116+0.2116+0.0961)/5 = 0.2554
    std = math.sqrt(0.2554)
    expected = torch.tensor([[0.0, 0.59, 0.64, 0.0], [0.0, -0.46, -0.46, -0.31]], dtype=torch.float64) / (std + 1e-8)
    out = reinforce_pp_advantages(rewards, mask, token_kl, kl_coef=0.5)
    torch.testing.assert_close(out, expected, atol=1e-7, rtol=0)


def test_reinforce_pp_discounts_returns():
    # reward 2 on the last of 3 tokens, gamma 0.5: returns 0.5, 1, 2; mean 7/6;
    # deviations -2/3, -1/6, 5/6; population variance (16+1+25)/36/3 = 7/18
    out = reinforce_pp_advantages(torch.tensor([2.0], dtype=torch.float64), torch.ones(1, 3), gamma=0.5)
    expected = torch.tensor([[-2 / 3, -1 / 6, 5 / 6]], dtype=torch.float64) / (math.sqrt(7 / 18) + 1e-8)
    torch.testing.assert_close(out, expected, atol=1e-7, rtol=0)


def test_registry_maps_each_policy_gradient_algorithm_to_token_advantages_zero_off_the_response():
    mask = torch.tensor([[0, 1, 1]] * 6)
    values = torch.tensor([[0.0, 0.5, -0.5]] * 6, dtype=torch.float64)
    inputs = AdvantageInputs(rewards=REWARDS, group_index=GROUPS, response_mask=mask, values=values)
    # the one algorithm -> estimator map: every policy-gradient algorithm of the config, nothing else
    policy_gradient = {name for name in ALGORITHMS if isinstance(OBJECTIVES[name](None), PolicyGradient)}
    assert set(ADVANTAGE_ESTIMATORS) == policy_gradient == {"grpo", "rloo", "reinforce_pp", "ppo"}
    for name, estimator in ADVANTAGE_ESTIMATORS.items():
        out = estimator(inputs, AlgorithmSection(name=name))
        assert out.shape == (6, 3), name
        assert out[:, 0].abs().max() == 0, name
    torch.testing.assert_close(ADVANTAGE_ESTIMATORS["grpo"](inputs, AlgorithmSection())[:, 1],
                               grpo_advantages(REWARDS, GROUPS))
    torch.testing.assert_close(ADVANTAGE_ESTIMATORS["grpo"](inputs, AlgorithmSection(normalize_std=False))[:, 1],
                               grpo_advantages(REWARDS, GROUPS, normalize_std=False))  # Dr. GRPO
    torch.testing.assert_close(ADVANTAGE_ESTIMATORS["rloo"](inputs, AlgorithmSection(name="rloo"))[:, 2],
                               rloo_advantages(REWARDS, GROUPS))


def test_registry_reads_the_kl_penalty_only_when_token_kl_is_given():
    # one sample, reward 1 on the last of 2 tokens, k1 = 0.5 per token, kl_coef 0.2, gamma 1:
    # token rewards -0.1, 1 - 0.1 = 0.9 -> returns 0.8, 0.9; whitened: mean 0.85, population std 0.05
    mask = torch.ones(1, 2)
    kl = torch.full((1, 2), 0.5, dtype=torch.float64)
    cfg = AlgorithmSection(name="reinforce_pp", kl_coef=0.2)
    rewards = torch.tensor([1.0], dtype=torch.float64)
    with_kl = ADVANTAGE_ESTIMATORS["reinforce_pp"](AdvantageInputs(rewards, None, mask, token_kl=kl), cfg)
    torch.testing.assert_close(with_kl, torch.tensor([[-0.05, 0.05]], dtype=torch.float64) / (0.05 + 1e-8),
                               atol=1e-6, rtol=0)
    # without token_kl the returns are 1, 1: whitened to 0
    without = ADVANTAGE_ESTIMATORS["reinforce_pp"](AdvantageInputs(rewards, None, mask), cfg)
    torch.testing.assert_close(without, torch.zeros(1, 2, dtype=torch.float64), atol=1e-6, rtol=0)
