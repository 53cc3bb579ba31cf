"""GAE, whitening, PPO token rewards and the PPO estimator on hand-worked examples (float64, tolerance 1e-7)."""

import math

import torch

from fastrlhf.algorithms.advantages import (ADVANTAGE_ESTIMATORS, AdvantageInputs, gae, ppo_advantages_and_returns,
                                            ppo_token_rewards, whiten)
from fastrlhf.config import AlgorithmSection

TOL = dict(atol=1e-7, rtol=0)
F64 = dict(dtype=torch.float64)

# Row 0: prompt at position 0, response at 1..3, padding at 4.  Row 1: prompt at 0, response at 1..4.
# The 9s sit off the response: if masking is wrong, row 0's V=9 at position 4 becomes a bootstrap value.
MASK = torch.tensor([[0, 1, 1, 1, 0], [0, 1, 1, 1, 1]])
VALUES = torch.tensor([[9.0, 1.0, 2.0, 3.0, 9.0], [9.0, 0.5, -1.0, 0.0, 2.0]], **F64)
REWARDS = torch.tensor([[9.0, 0.0, 0.5, 1.0, 9.0], [9.0, 0.1, 0.0, -0.2, 3.0]], **F64)
GAMMA, LAM = 0.9, 0.8  # gamma * lam = 0.72

# Row 0 (backwards; the value after the last response token is 0):
#   t3: delta = 1.0 + 0.9*0   - 3.0 = -2.0            A = -2.0
#   t2: delta = 0.5 + 0.9*3.0 - 2.0 =  1.2            A = 1.2 + 0.72*(-2.0)  = -0.24
#   t1: delta = 0.0 + 0.9*2.0 - 1.0 =  0.8            A = 0.8 + 0.72*(-0.24) =  0.6272
# Row 1:
#   t4: delta = 3.0 + 0          - 2.0 =  1.0         A = 1.0
#   t3: delta = -0.2 + 0.9*2.0   - 0.0 =  1.6         A = 1.6 + 0.72*1.0    = 2.32
#   t2: delta = 0.0 + 0.9*0.0    + 1.0 =  1.0         A = 1.0 + 0.72*2.32   = 2.6704
#   t1: delta = 0.1 + 0.9*(-1.0) - 0.5 = -1.3         A = -1.3 + 0.72*2.6704 = 0.622688
ADVANTAGES = torch.tensor([[0.0, 0.6272, -0.24, -2.0, 0.0], [0.0, 0.622688, 2.6704, 2.32, 1.0]], **F64)
# returns = A + V on the response: row 0: 1.6272, 1.76, 1.0;  row 1: 1.122688, 1.6704, 2.32, 3.0
RETURNS = torch.tensor([[0.0, 1.6272, 1.76, 1.0, 0.0], [0.0, 1.122688, 1.6704, 2.32, 3.0]], **F64)


def test_gae_hand_worked_with_padding_and_prompt():
    advantages, returns = gae(REWARDS, VALUES, MASK, gamma=GAMMA, lam=LAM)
    torch.testing.assert_close(advantages, ADVANTAGES, **TOL)
    torch.testing.assert_close(returns, RETURNS, **TOL)


def test_gae_lambda_zero_is_one_step_td_and_lambda_one_is_monte_carlo():
    advantages, _ = gae(REWARDS, VALUES, MASK, gamma=GAMMA, lam=0.0)
    # A = delta: row 0: 0.8, 1.2, -2.0;  row 1: -1.3, 1.0, 1.6, 1.0
    expected = torch.tensor([[0.0, 0.8, 1.2, -2.0, 0.0], [0.0, -1.3, 1.0, 1.6, 1.0]], **F64)
    torch.testing.assert_close(advantages, expected, **TOL)
    advantages, returns = gae(REWARDS, VALUES, MASK, gamma=1.0, lam=1.0)
    # A = (sum of future rewards) - V: row 0: 1.5-1, 1.5-2, 1.0-3;  row 1: 2.9-0.5, 2.8+1, 2.8-0, 3-2
    expected = torch.tensor([[0.0, 0.5, -0.5, -2.0, 0.0], [0.0, 2.4, 3.8, 2.8, 1.0]], **F64)
    torch.testing.assert_close(advantages, expected, **TOL)
    torch.testing.assert_close(returns, torch.tensor([[0.0, 1.5, 1.5, 1.0, 0.0], [0.0, 2.9, 2.8, 2.8, 3.0]], **F64),
                               **TOL)


def test_gae_does_not_backpropagate_into_values():
    values = VALUES.clone().requires_grad_(True)
    advantages, returns = gae(REWARDS, values, MASK, gamma=GAMMA, lam=LAM)
    assert not advantages.requires_grad and not returns.requires_grad


def test_whiten_uses_batch_mean_and_population_std_over_masked_tokens():
    values = torch.tensor([[1.0, 2.0, 99.0], [6.0, 99.0, 99.0]], **F64)
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    # masked values 1, 2, 6: mean 3; deviations -2, -1, 3; population variance (4+1+9)/3 = 14/3
    # (sample variance 7, or whitening per row, would give other numbers)
    std = math.sqrt(14 / 3)  # 2.160247
    expected = torch.tensor([[-2.0, -1.0, 0.0], [3.0, 0.0, 0.0]], **F64) / (std + 1e-8)
    torch.testing.assert_close(whiten(values, mask), expected, **TOL)
    kept_mean = (torch.tensor([[-2.0, -1.0, 0.0], [3.0, 0.0, 0.0]], **F64) / (std + 1e-8) + 3.0) * mask
    torch.testing.assert_close(whiten(values, mask, shift_mean=False), kept_mean, **TOL)


SCORES = torch.tensor([2.0, -1.0], **F64)
LOGPROBS = torch.tensor([[-9.0, -1.0, -0.5, -2.0, -9.0], [-9.0, -0.2, -0.3, -0.4, -0.5]], **F64)
REF_LOGPROBS = torch.tensor([[0.0, -1.5, -0.5, -1.0, 0.0], [0.0, -0.4, -0.3, -0.2, -0.5]], **F64)


def test_ppo_token_rewards_score_on_last_token_minus_k1_kl():
    # k1 = logp - ref: row 0: 0.5, 0.0, -1.0;  row 1: 0.2, 0.0, -0.2, 0.0   (kl_coef 0.1)
    # row 0: -0.05, 0, 2.0 + 0.1 = 2.1 (score on position 3, not the padded 4)
    # row 1: -0.02, 0, 0.02, -1.0 - 0 = -1.0
    expected = torch.tensor([[0.0, -0.05, 0.0, 2.1, 0.0], [0.0, -0.02, 0.0, 0.02, -1.0]], **F64)
    out = ppo_token_rewards(SCORES, LOGPROBS, REF_LOGPROBS, MASK, kl_coef=0.1)
    torch.testing.assert_close(out, expected, **TOL)
    without_ref = ppo_token_rewards(SCORES, LOGPROBS, None, MASK, kl_coef=0.1)
    expected = torch.tensor([[0.0, 0.0, 0.0, 2.0, 0.0], [0.0, 0.0, 0.0, 0.0, -1.0]], **F64)
    torch.testing.assert_close(without_ref, expected, **TOL)


def test_ppo_estimator_is_gae_over_ppo_token_rewards_then_whitening():
    # token rewards from the test above; GAE with VALUES, gamma 0.9, lambda 0.8 (gamma * lam = 0.72):
    # row 0: t3: delta = 2.1 - 3 = -0.9                A = -0.9
    #        t2: delta = 0 + 0.9*3 - 2 = 0.7           A = 0.7 + 0.72*(-0.9) = 0.052
    #        t1: delta = -0.05 + 0.9*2 - 1 = 0.75      A = 0.75 + 0.72*0.052 = 0.78744
    # row 1: t4: delta = -1 - 2 = -3                   A = -3
    #        t3: delta = 0.02 + 0.9*2 - 0 = 1.82       A = 1.82 + 0.72*(-3) = -0.34
    #        t2: delta = 0 + 0 + 1 = 1                 A = 1 + 0.72*(-0.34) = 0.7552
    #        t1: delta = -0.02 + 0.9*(-1) - 0.5 = -1.42  A = -1.42 + 0.72*0.7552 = -0.876256
    advantages = torch.tensor([[0.0, 0.78744, 0.052, -0.9, 0.0], [0.0, -0.876256, 0.7552, -0.34, -3.0]], **F64)
    returns = advantages + VALUES * MASK  # row 0: 1.78744, 2.052, 2.1;  row 1: -0.376256, -0.2448, -0.34, -1
    inputs = AdvantageInputs(SCORES, None, MASK, token_kl=LOGPROBS - REF_LOGPROBS, values=VALUES)
    cfg = AlgorithmSection(name="ppo", kl_coef=0.1, gae_gamma=GAMMA, gae_lambda=LAM, whiten_advantages=False)
    out_advantages, out_returns = ppo_advantages_and_returns(inputs, cfg)
    torch.testing.assert_close(out_advantages, advantages, **TOL)
    torch.testing.assert_close(out_returns, returns, **TOL)
    cfg.whiten_advantages = True  # whitened advantages; returns untouched
    torch.testing.assert_close(ADVANTAGE_ESTIMATORS["ppo"](inputs, cfg), whiten(advantages, MASK), **TOL)
    torch.testing.assert_close(ppo_advantages_and_returns(inputs, cfg)[1], returns, **TOL)
