"""Loss aggregation and micro-batch shares on a hand-worked example (float64, tolerance 1e-7).

These are the functions the trainer runs: objectives.PolicyGradient and the PPO critic take the
count over the mini-batch (`aggregate_count`) and give each micro-batch `share_of(count, name)`.
"""

import pytest
import torch

from fastrlhf.algorithms import objectives
from fastrlhf.algorithms.losses.aggregation import (AGGREGATIONS, aggregate, aggregate_count, sequence_mean,
                                                    share_of, share_of_mean, token_mean, token_sum_norm)

TOL = dict(atol=1e-7, rtol=0)
VALUES = torch.tensor([[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 8.0], [9.0, 10.0, 11.0, 12.0]], dtype=torch.float64)
MASK = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1], [0, 0, 0, 0]])  # row 2 has no response tokens
# masked values: row 0: 1, 2 (sum 3, mean 1.5);  row 1: 5, 6, 7, 8 (sum 26, mean 6.5);  row 2: none
EXPECTED = {
    "token_mean": 29 / 6,          # (3 + 26) / 6 tokens = 4.833333
    "sequence_mean": 4.0,          # (1.5 + 6.5) / 2 rows with a token (row 2 skipped, not counted)
    "token_sum_norm": 29 / 12,     # 29 / (N=3 * T=4) = 2.416667
}
COUNTS = {"token_mean": 6.0, "sequence_mean": 2.0, "token_sum_norm": 12.0}


def f64(x):
    return torch.tensor(x, dtype=torch.float64)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_aggregations_hand_worked(name):
    torch.testing.assert_close(AGGREGATIONS[name](VALUES, MASK), f64(EXPECTED[name]), **TOL)
    torch.testing.assert_close(aggregate(VALUES, MASK, name), f64(EXPECTED[name]), **TOL)
    assert aggregate_count(MASK, name) == COUNTS[name]


def test_named_functions_and_the_dr_grpo_budget():
    torch.testing.assert_close(token_mean(VALUES, MASK), f64(29 / 6), **TOL)
    torch.testing.assert_close(sequence_mean(VALUES, MASK), f64(4.0), **TOL)
    torch.testing.assert_close(token_sum_norm(VALUES, MASK, max_tokens=10), f64(29 / 30), **TOL)  # 29 / (3 * 10)
    assert aggregate_count(MASK, "token_sum_norm", max_tokens=10) == 30.0


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_micro_batch_shares_add_up_to_the_mini_batch_aggregate(name):
    count = aggregate_count(MASK, name)
    share = share_of(count, name)
    first, rest = share(VALUES[:1], MASK[:1]), share(VALUES[1:], MASK[1:])
    # token_mean: 3/6 + 26/6;  sequence_mean: 1.5/2 + 6.5/2;  token_sum_norm: 3/12 + 26/12
    parts = {"token_mean": (3 / 6, 26 / 6), "sequence_mean": (0.75, 3.25), "token_sum_norm": (3 / 12, 26 / 12)}[name]
    torch.testing.assert_close(first, f64(parts[0]), **TOL)
    torch.testing.assert_close(rest, f64(parts[1]), **TOL)
    torch.testing.assert_close(first + rest, f64(EXPECTED[name]), **TOL)


def test_gradient_weights_of_token_and_sequence_mean():
    values = VALUES.clone().requires_grad_(True)
    token_mean(values, MASK).backward()
    torch.testing.assert_close(values.grad, MASK.double() / 6, **TOL)  # every token 1/6
    values.grad = None
    sequence_mean(values, MASK).backward()
    # row 0's two tokens 1/(2 rows * 2 tokens) = 0.25, row 1's four 1/(2 * 4) = 0.125, row 2: 0
    expected = torch.tensor([[0.25, 0.25, 0, 0], [0.125] * 4, [0.0] * 4], dtype=torch.float64)
    torch.testing.assert_close(values.grad, expected, **TOL)


def test_empty_mask_aggregates_to_zero_and_unknown_names_are_refused():
    empty = torch.zeros_like(MASK)
    for name in EXPECTED:
        assert float(aggregate(VALUES, empty, name)) == 0.0, name
    with pytest.raises(ValueError, match="unknown loss aggregation 'mean'"):
        aggregate_count(MASK, "mean")
    with pytest.raises(ValueError, match="unknown loss aggregation"):
        share_of(1.0, "mean")


def test_share_of_a_mean():
    # a micro-batch of 1 pair with mean loss 2.0, in a mini-batch of 4 pairs: 2.0 * 1 / 4
    torch.testing.assert_close(share_of_mean(f64(2.0), 1, 4), f64(0.5), **TOL)
    torch.testing.assert_close(share_of_mean(f64(2.0), 0, 0), f64(0.0), **TOL)  # empty: divide by 1


def test_objectives_run_these_functions():
    """One implementation: the trainer's objectives module uses this file's share, no copy of its own."""
    assert objectives.share_of is share_of and objectives.aggregate_count is aggregate_count
