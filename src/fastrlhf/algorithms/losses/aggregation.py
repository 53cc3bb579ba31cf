"""How per-token losses [N, T] become one scalar: the choice that separates GRPO, DAPO and Dr. GRPO.

values [N, T] are per-token losses, mask [N, T] is 1 on the tokens that count (response tokens).

* `token_mean` (DAPO eq. 8, "token-level policy gradient loss"):
      sum_i sum_t m_it v_it / sum_i sum_t m_it
  every token weighs the same, so long responses weigh more.
* `sequence_mean` (GRPO, DeepSeekMath eq. 3):
      (1/N') sum_i [ sum_t m_it v_it / sum_t m_it ]
  average within each response, then over the N' responses that have at least one token; every
  response weighs the same, so each token of a long response weighs less.
* `token_sum_norm` (Dr. GRPO): sum_i sum_t m_it v_it / (N * L), with L a constant — the
  generation budget `max_tokens` (default: the padded width T). No length bias either way; pass
  `functools.partial(token_sum_norm, max_tokens=...)` to keep L fixed across micro-batches.

Left out: exact equivalence under gradient accumulation. `token_mean` and `sequence_mean` of a
micro-batch divide by that micro-batch's own token / sequence count; a trainer that wants the
full-batch value must weight micro-batch losses by their share of tokens / sequences.
"""

from __future__ import annotations

from collections.abc import Callable

import torch


def token_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over all masked tokens of the batch (0 when the mask is empty)."""
    mask = mask.to(values.dtype)
    return (values * mask).sum() / mask.sum().clamp(min=1)


def sequence_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over rows of each row's masked token mean; rows without tokens are skipped."""
    mask = mask.to(values.dtype)
    tokens_per_row = mask.sum(dim=1)  # [N]
    row_means = (values * mask).sum(dim=1) / tokens_per_row.clamp(min=1)  # [N]
    rows_with_tokens = (tokens_per_row > 0).to(values.dtype)
    return (row_means * rows_with_tokens).sum() / rows_with_tokens.sum().clamp(min=1)


def token_sum_norm(values: torch.Tensor, mask: torch.Tensor, max_tokens: int | None = None) -> torch.Tensor:
    """Sum over masked tokens divided by rows * max_tokens (Dr. GRPO's constant normaliser)."""
    budget = values.shape[1] if max_tokens is None else max_tokens
    return (values * mask.to(values.dtype)).sum() / (values.shape[0] * budget)


# name -> aggregate(values [N, T], mask [N, T]) -> scalar
AGGREGATIONS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "token_mean": token_mean,
    "sequence_mean": sequence_mean,
    "token_sum_norm": token_sum_norm,
}
