"""Bradley–Terry loss: hand-worked value, gradient, statistics, stability."""

import math

import pytest
import torch

from fastrlhf.algorithms.losses import bradley_terry_loss


def test_hand_worked_value_and_stats():
    chosen, rejected = torch.tensor([2.0, 0.0, 0.5]), torch.tensor([0.0, 1.0, 0.5])
    loss, stats = bradley_terry_loss(chosen, rejected)
    # margins 2, -1, 0: -log σ(2) = log(1 + e^-2), -log σ(-1) = log(1 + e), -log σ(0) = log 2
    expected = (math.log(1 + math.exp(-2)) + math.log(1 + math.e) + math.log(2)) / 3
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    assert stats["loss"] == pytest.approx(expected, abs=1e-6)
    assert stats["accuracy"] == pytest.approx(1 / 3)  # the tie counts as wrong
    assert stats["margin"] == pytest.approx(1 / 3, abs=1e-6)
    assert stats["chosen_score"] == pytest.approx(2.5 / 3) and stats["rejected_score"] == pytest.approx(0.5)


def test_gradient_pushes_chosen_up_and_rejected_down():
    chosen = torch.tensor([1.0, -1.0], requires_grad=True)
    rejected = torch.tensor([0.0, 0.0], requires_grad=True)
    loss, _ = bradley_terry_loss(chosen, rejected)
    loss.backward()
    # dL/ds_c = -σ(-m) / P, dL/ds_r = +σ(-m) / P with m = s_c - s_r
    sig = lambda x: 1 / (1 + math.exp(-x))
    assert chosen.grad.tolist() == pytest.approx([-sig(-1) / 2, -sig(1) / 2], abs=1e-6)
    assert rejected.grad.tolist() == pytest.approx([sig(-1) / 2, sig(1) / 2], abs=1e-6)


def test_large_margins_stay_finite():
    loss, stats = bradley_terry_loss(torch.tensor([-100.0, 100.0]), torch.tensor([0.0, 0.0]))
    assert loss.item() == pytest.approx(50.0, abs=1e-5)  # (100 + ~0) / 2
    assert stats["accuracy"] == 0.5


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError):
        bradley_terry_loss(torch.zeros(3), torch.zeros(2))
    with pytest.raises(ValueError):
        bradley_terry_loss(torch.zeros(2, 1), torch.zeros(2, 1))
