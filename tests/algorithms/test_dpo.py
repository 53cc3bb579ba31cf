"""DPO / IPO losses and online pair selection on hand-worked examples (float64, tolerance 1e-7)."""

import math

import pytest
import torch

from fastrlhf.algorithms.losses.dpo import DPO_LOSSES, dpo_loss, select_pairs

TOL = dict(atol=1e-7, rtol=0)
F64 = dict(dtype=torch.float64)

# two pairs of summed sequence log-probs
CHOSEN = torch.tensor([-5.0, -4.0], **F64)
REJECTED = torch.tensor([-7.0, -3.0], **F64)
REF_CHOSEN = torch.tensor([-6.0, -3.5], **F64)
REF_REJECTED = torch.tensor([-6.0, -5.0], **F64)
# log-ratios: chosen 1.0, -0.5; rejected -1.0, 2.0;  h = (c - r) - (ref_c - ref_r) = 2.0, -2.5
# (flipping the reference sign would give h = 2.0, 0.5; swapping chosen/rejected h = -2.0, 2.5)
BETA = 0.1  # beta * h = 0.2, -0.25


def run(loss_type="sigmoid", beta=BETA):
    chosen = CHOSEN.clone().requires_grad_(True)
    rejected = REJECTED.clone().requires_grad_(True)
    loss, stats = dpo_loss(chosen, rejected, REF_CHOSEN, REF_REJECTED, beta=beta, loss_type=loss_type)
    loss.backward()
    return loss, stats, chosen.grad, rejected.grad


def test_sigmoid_dpo_loss_and_stats():
    loss, stats, _, _ = run()
    # -log sigma(x) = log(1 + e^-x):  log(1 + e^-0.2) = log(1.8187308) = 0.5981389
    #                                  log(1 + e^0.25) = log(2.2840254) = 0.8259394;  mean 0.7120391
    expected = (math.log(1 + math.exp(-0.2)) + math.log(1 + math.exp(0.25))) / 2
    torch.testing.assert_close(loss, torch.tensor(expected, **F64), **TOL)
    assert stats["loss"] == pytest.approx(expected, abs=1e-7)
    assert stats["rewards_chosen"] == pytest.approx(0.1 * (1.0 - 0.5) / 2, abs=1e-7)     # 0.025
    assert stats["rewards_rejected"] == pytest.approx(0.1 * (-1.0 + 2.0) / 2, abs=1e-7)  # 0.05
    assert stats["reward_margin"] == pytest.approx((0.2 - 0.25) / 2, abs=1e-7)           # -0.025
    assert stats["reward_accuracy"] == pytest.approx(0.5, abs=1e-7)                     # only pair 0 > 0
    assert stats["pairs"] == 2


def test_sigmoid_gradient_sign_favours_the_chosen_response():
    loss, _, grad_chosen, grad_rejected = run()
    # d/dc [-log sigma(beta h)] / P = -beta * sigma(-beta h) / 2:
    #   pair 0: -0.1 * 1/(1 + e^0.2) / 2 = -0.1 * 0.4501660 / 2 = -0.0225083
    #   pair 1: -0.1 * 1/(1 + e^-0.25) / 2 = -0.1 * 0.5621765 / 2 = -0.0281088
    expected = torch.tensor([-0.1 / (1 + math.exp(0.2)) / 2, -0.1 / (1 + math.exp(-0.25)) / 2], **F64)
    torch.testing.assert_close(grad_chosen, expected, **TOL)
    torch.testing.assert_close(grad_rejected, -expected, **TOL)
    # one step of gradient ascent on the chosen log-prob lowers the loss
    stepped, _ = dpo_loss(CHOSEN + 0.5, REJECTED, REF_CHOSEN, REF_REJECTED, beta=BETA)
    assert stepped < loss


def test_ipo_loss_and_gradient():
    loss, _, grad_chosen, _ = run("ipo")
    # target 1 / (2 beta) = 5:  (2.0 - 5)^2 = 9,  (-2.5 - 5)^2 = 56.25;  mean 32.625
    torch.testing.assert_close(loss, torch.tensor(32.625, **F64), **TOL)
    # d/dc = 2 (h - 5) / 2 = -3.0, -7.5
    torch.testing.assert_close(grad_chosen, torch.tensor([-3.0, -7.5], **F64), **TOL)
    loss, _, _, _ = run("ipo", beta=0.5)  # target 1: (2 - 1)^2 = 1, (-3.5)^2 = 12.25; mean 6.625
    torch.testing.assert_close(loss, torch.tensor(6.625, **F64), **TOL)


def test_registry_errors_and_no_pairs():
    assert set(DPO_LOSSES) == {"sigmoid", "ipo"}
    with pytest.raises(ValueError, match="unknown DPO loss_type"):
        run("hinge")
    with pytest.raises(ValueError, match="must all be"):
        dpo_loss(CHOSEN, REJECTED, REF_CHOSEN, torch.zeros(3, **F64), beta=BETA)
    empty = torch.zeros(0, **F64, requires_grad=True)
    loss, stats = dpo_loss(empty, empty, empty.detach(), empty.detach(), beta=BETA)
    loss.backward()
    assert loss.item() == 0.0 and stats["pairs"] == 0 and stats["reward_accuracy"] == 0.0


def test_select_pairs_best_vs_worst_per_group():
    group_index = torch.tensor([4, 4, 9, 4, 1, 4, 1, 9, 2, 9])
    rewards = torch.tensor([1.0, 5.0, 0.0, 3.0, 2.0, 5.0, 2.0, 0.0, 8.0, 4.0], **F64)
    # group 1 (rows 4, 6): rewards 2, 2 -> tie, no pair
    # group 2 (row 8): one sample -> no pair
    # group 4 (rows 0, 1, 3, 5): rewards 1, 5, 3, 5 -> chosen row 1 (first 5), rejected row 0
    # group 9 (rows 2, 7, 9): rewards 0, 0, 4 -> chosen row 9, rejected row 2 (first 0)
    chosen, rejected = select_pairs(rewards, group_index)
    assert chosen.dtype == torch.long and rejected.dtype == torch.long
    assert chosen.tolist() == [1, 9] and rejected.tolist() == [0, 2]
    chosen, rejected = select_pairs(torch.tensor([3.0, 3.0]), torch.tensor([0, 0]))
    assert chosen.tolist() == [] and rejected.tolist() == []
    with pytest.raises(ValueError, match="finite"):
        select_pairs(torch.tensor([1.0, math.nan]), torch.tensor([0, 0]))
