"""PPO's clipped value loss on a hand-worked example (float64, tolerance 1e-7)."""

import math

import pytest
import torch

from fastrlhf.algorithms.losses.value import clipped_value_loss

TOL = dict(atol=1e-7, rtol=0)
F64 = dict(dtype=torch.float64)

VALUES = torch.tensor([[1.0, 0.4, 2.0], [-1.0, 0.0, 10.0]], **F64)
OLD_VALUES = torch.tensor([[0.5, 0.5, 1.0], [0.0, 0.0, 0.0]], **F64)
RETURNS = torch.tensor([[1.2, 0.0, 3.0], [0.5, -1.0, 0.0]], **F64)
MASK = torch.tensor([[1, 1, 1], [1, 1, 0]])  # row 1's last token is padding (its loss 50 must not count)
# clip_range 0.2; clipped value = v_old + clip(v - v_old, -0.2, 0.2):
#   r0 t0: v-v_old = 0.5 -> 0.7;   (1.0-1.2)^2 = 0.04, (0.7-1.2)^2 = 0.25  -> 0.5*0.25 = 0.125  (clip larger)
#   r0 t1: -0.1 inside -> 0.4;     (0.4-0)^2 = 0.16 both                   -> 0.08
#   r0 t2: 1.0 -> 1.2;             (2-3)^2 = 1,  (1.2-3)^2 = 3.24           -> 1.62   (clip larger)
#   r1 t0: -1.0 -> -0.2;           (-1-0.5)^2 = 2.25, (-0.2-0.5)^2 = 0.49   -> 1.125
#   r1 t1: 0 inside -> 0.0;        (0+1)^2 = 1 both                         -> 0.5
# token mean: (0.125 + 0.08 + 1.62 + 1.125 + 0.5) / 5 = 3.45 / 5 = 0.69
# (min instead of max would give (0.02 + 0.08 + 0.5 + 1.125 + 0.5) / 5 = 0.445)


def run(**kwargs):
    values = VALUES.clone().requires_grad_(True)
    loss, stats = clipped_value_loss(values, OLD_VALUES, RETURNS, MASK, **kwargs)
    loss.backward()
    return loss, stats, values.grad


def test_clipped_value_loss_stats_and_gradient():
    loss, stats, grad = run(clip_range=0.2)
    torch.testing.assert_close(loss, torch.tensor(0.69, **F64), **TOL)
    assert stats["value_loss"] == pytest.approx(0.69, abs=1e-7)
    assert stats["value_clip_fraction"] == pytest.approx(2 / 5, abs=1e-7)
    assert stats["values"] == pytest.approx((1.0 + 0.4 + 2.0 - 1.0 + 0.0) / 5, abs=1e-7)  # 0.48
    assert stats["returns"] == pytest.approx((1.2 + 0.0 + 3.0 + 0.5 - 1.0) / 5, abs=1e-7)  # 0.74
    # Var(R): deviations from 0.74: 0.46 -0.74 2.26 -0.24 -1.74 -> (0.2116+0.5476+5.1076+0.0576+3.0276)/5 = 1.7904
    # R - v = 0.2 -0.4 1.0 1.5 -1.0, mean 0.26: deviations -0.06 -0.66 0.74 1.24 -1.26
    #   -> (0.0036+0.4356+0.5476+1.5376+1.5876)/5 = 0.8224
    assert stats["explained_variance"] == pytest.approx(1 - 0.8224 / 1.7904, abs=1e-7)
    # d/dv = (v - R) / 5 where the unclipped term wins, 0 where the clipped one does, 0 on padding
    expected_grad = torch.tensor([[0.0, 0.4 / 5, 0.0], [-1.5 / 5, 1.0 / 5, 0.0]], **F64)
    torch.testing.assert_close(grad, expected_grad, **TOL)


def test_unclipped_when_clip_range_is_off():
    for clip_range in (None, 0.0):
        loss, stats, grad = run(clip_range=clip_range)
        # 0.5 * (0.04 + 0.16 + 1 + 2.25 + 1) / 5 = 2.225 / 5
        torch.testing.assert_close(loss, torch.tensor(0.445, **F64), **TOL)
        assert stats["value_clip_fraction"] == 0.0
        torch.testing.assert_close(grad, torch.tensor([[-0.2, 0.4, -1.0], [-1.5, 1.0, 0.0]], **F64) / 5, **TOL)


def test_sequence_mean_aggregation_by_name_and_callable():
    # row means: (0.125 + 0.08 + 1.62) / 3 = 0.608333,  (1.125 + 0.5) / 2 = 0.8125; mean of rows
    expected = torch.tensor((1.825 / 3 + 0.8125) / 2, **F64)
    loss, _, _ = run(clip_range=0.2, aggregation="sequence_mean")
    torch.testing.assert_close(loss, expected, **TOL)
    loss, _, _ = run(clip_range=0.2, aggregation=lambda v, m: (v * m).sum())  # plain masked sum 3.45
    torch.testing.assert_close(loss, torch.tensor(3.45, **F64), **TOL)
    with pytest.raises(ValueError, match="unknown loss aggregation"):
        run(clip_range=0.2, aggregation="mean")


def test_explained_variance_edge_cases_and_shapes():
    returns = torch.tensor([[1.0, 2.0, 3.0]], **F64)
    _, stats = clipped_value_loss(returns, returns, returns, torch.ones(1, 3), clip_range=0.2)
    assert stats["explained_variance"] == pytest.approx(1.0) and stats["value_loss"] == 0.0
    constant = torch.ones(1, 3, **F64)
    _, stats = clipped_value_loss(returns, returns, constant, torch.ones(1, 3), clip_range=0.2)
    assert math.isnan(stats["explained_variance"])  # Var(R) = 0: undefined
    with pytest.raises(ValueError, match="must all be"):
        clipped_value_loss(returns, returns, torch.ones(1, 4), torch.ones(1, 3), clip_range=0.2)
