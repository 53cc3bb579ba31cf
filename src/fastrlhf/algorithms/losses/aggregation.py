"""How per-token losses [N, T] become one scalar: the choice that separates GRPO, DAPO and Dr. GRPO.

values [N, T] are per-token losses, mask [N, T] is 1 on the tokens that count (response tokens).
Every aggregation is a masked sum divided by a count:

* `token_mean` (DAPO eq. 8, "token-level policy gradient loss"):
      sum_i sum_t m_it v_it / sum_i sum_t m_it
  every token weighs the same, so long responses weigh more.
* `sequence_mean` (GRPO, DeepSeekMath eq. 3):
      (1/N') sum_i [ sum_t m_it v_it / sum_t m_it ]
  average within each response, then over the N' responses that have at least one token; every
  response weighs the same, so each token of a long response weighs less.
* `token_sum_norm` (Dr. GRPO): sum_i sum_t m_it v_it / (N * L), with L a constant — the
  generation budget `max_tokens` (default: the padded width T). No length bias either way; pass
  `functools.partial(token_sum_norm, max_tokens=...)` to keep L fixed.

Gradient accumulation: a trainer that splits a mini-batch into micro-batches takes the count once
over the whole mini-batch (`aggregate_count(mini_mask, name)`) and gives each micro-batch
`share_of(count, name)(values, mask)` = its masked sum / that count. The shares add up to the
mini-batch's aggregate exactly (up to float rounding), whatever the micro-batch size; the plain
functions above are the one-micro-batch case. A loss that is already a mean over the micro-batch's
own units (DPO: over its pairs) gives `share_of_mean(mean, units, count)` = mean · units / count. A count below 1 (an empty mask) divides by 1, so an
empty batch aggregates to 0.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

Aggregation = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (values [N, T], mask [N, T]) -> scalar


def _token_sum(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """sum_i sum_t m_it v_it."""
    return (values * mask.to(values.dtype)).sum()


def _row_mean_sum(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """sum_i [sum_t m_it v_it / sum_t m_it]; a row without tokens adds 0."""
    mask = mask.to(values.dtype)
    return ((values * mask).sum(1) / mask.sum(1).clamp(min=1)).sum()


def _token_count(mask: torch.Tensor, max_tokens: int | None) -> float:
    return float(mask.sum())


def _sequence_count(mask: torch.Tensor, max_tokens: int | None) -> float:
    return float((mask.sum(1) > 0).sum())


def _budget_count(mask: torch.Tensor, max_tokens: int | None) -> float:
    return float(mask.shape[0] * (mask.shape[1] if max_tokens is None else max_tokens))


# name -> (masked sum, count over the whole batch)
_PARTS = {
    "token_mean": (_token_sum, _token_count),
    "sequence_mean": (_row_mean_sum, _sequence_count),
    "token_sum_norm": (_token_sum, _budget_count),
}


def _parts(aggregation: str) -> tuple[Aggregation, Callable[[torch.Tensor, int | None], float]]:
    if aggregation not in _PARTS:
        raise ValueError(f"unknown loss aggregation {aggregation!r}; choose one of {sorted(_PARTS)}")
    return _PARTS[aggregation]


def aggregate_count(mask: torch.Tensor, aggregation: str, *, max_tokens: int | None = None) -> float:
    """What `aggregation` divides by over `mask` [N, T]: tokens, rows with a token, or N * max_tokens."""
    return _parts(aggregation)[1](mask, max_tokens)


def share_of(count: float, aggregation: str) -> Aggregation:
    """fn(values, mask) -> this micro-batch's part of the aggregate: its masked sum / `count`."""
    masked_sum = _parts(aggregation)[0]
    return lambda values, mask: masked_sum(values, mask) / max(count, 1.0)


def share_of_mean(mean: torch.Tensor, units: float, count: float) -> torch.Tensor:
    """A micro-batch's share of a mean over `count` units, from its own mean over its `units` units."""
    return mean * units / max(count, 1.0)


def aggregate(values: torch.Tensor, mask: torch.Tensor, aggregation: str = "token_mean", *,
              max_tokens: int | None = None) -> torch.Tensor:
    """`aggregation` of values [N, T] over mask [N, T] as one scalar (one micro-batch = the batch)."""
    return share_of(aggregate_count(mask, aggregation, max_tokens=max_tokens), aggregation)(values, mask)


def token_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over all masked tokens of the batch (0 when the mask is empty)."""
    return aggregate(values, mask, "token_mean")


def sequence_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over rows of each row's masked token mean; rows without tokens are skipped."""
    return aggregate(values, mask, "sequence_mean")


def token_sum_norm(values: torch.Tensor, mask: torch.Tensor, max_tokens: int | None = None) -> torch.Tensor:
    """Sum over masked tokens divided by rows * max_tokens (Dr. GRPO's constant normaliser)."""
    return aggregate(values, mask, "token_sum_norm", max_tokens=max_tokens)


# name -> aggregate(values [N, T], mask [N, T]) -> scalar
AGGREGATIONS: dict[str, Aggregation] = {
    "token_mean": token_mean,
    "sequence_mean": sequence_mean,
    "token_sum_norm": token_sum_norm,
}


def resolve(aggregation: str | Aggregation) -> Aggregation:
    """A name from `AGGREGATIONS`, or any fn(values, mask) -> scalar (e.g. a `share_of`), as a function."""
    if callable(aggregation):
        return aggregation
    _parts(aggregation)  # unknown names: ValueError
    return AGGREGATIONS[aggregation]
