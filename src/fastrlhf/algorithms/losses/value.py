"""Clipped value (critic) loss of PPO as a pure function.

Per response token t of sample i (Schulman et al. 2017 PPO, value clipping as in OpenAI baselines'
ppo2 and InstructGPT's PPO; eps = clip_range):

    clipped_values_it = v_old_it + clip(v_it - v_old_it, -eps, eps)
    value_loss_it     = 0.5 * max((v_it - R_it)^2, (clipped_values_it - R_it)^2)
    loss              = aggregate(value_loss_it, response_mask)

R are the returns (targets) from `algorithms.advantages.gae`; `values` are the critic's current
predictions (with grad) and `old_values` its predictions when the batch was generated.
`clip_range` None or <= 0 gives the unclipped 0.5 * (v - R)^2. `aggregation` is a name from
`AGGREGATIONS` or any `fn(values [N, T], mask [N, T]) -> scalar`, as in `clipped_policy_loss`.

Statistics (floats; means are token means over the response mask):
    loss / value_loss (aggregated like the loss), value_clip_fraction (share of tokens where the
    clipped term is strictly the larger, so the clip removes that token's gradient), values and
    returns (means), explained_variance = 1 - Var(R - v) / Var(R) (population variances over the
    masked tokens; NaN when Var(R) = 0, where it is undefined).

Left out: Huber value loss, value-target normalisation (PopArt), separate learning rates or
coefficients for the critic (the trainer scales the loss).
"""

from __future__ import annotations

import torch

from fastrlhf.algorithms.losses.aggregation import Aggregation, resolve
from fastrlhf.algorithms.losses.policy import _masked_mean


def _check_shapes(*tensors: torch.Tensor) -> None:
    shapes = [tuple(tensor.shape) for tensor in tensors]
    if len(set(shapes)) != 1 or len(shapes[0]) != 2:
        raise ValueError(f"values, old_values, returns and response_mask {shapes} must all be [N, T]")


def clipped_value_loss(
    values: torch.Tensor,         # [N, T] V_theta at each token position (with grad)
    old_values: torch.Tensor,     # [N, T] V_old, the critic when the batch was generated
    returns: torch.Tensor,        # [N, T] targets R (lambda-returns from gae)
    response_mask: torch.Tensor,  # [N, T] 1 on response tokens
    *,
    clip_range: float | None,
    aggregation: str | Aggregation = "token_mean",
) -> tuple[torch.Tensor, dict[str, float]]:
    """PPO's clipped value loss; returns (scalar loss, stats)."""
    _check_shapes(values, old_values, returns, response_mask)
    aggregate = resolve(aggregation)
    unclipped = (values - returns) ** 2                                      # [N, T]
    if clip_range is not None and clip_range > 0:
        clipped_values = old_values + torch.clamp(values - old_values, -clip_range, clip_range)  # [N, T]
        clipped = (clipped_values - returns) ** 2                            # [N, T]
        token_losses = 0.5 * torch.max(unclipped, clipped)                   # [N, T]
        clip_active = clipped > unclipped                                    # [N, T]
    else:
        token_losses = 0.5 * unclipped
        clip_active = torch.zeros_like(unclipped, dtype=torch.bool)
    loss = aggregate(token_losses, response_mask)
    with torch.no_grad():
        stats = {
            "loss": float(loss),
            "value_loss": float(loss),
            "value_clip_fraction": _masked_mean(clip_active.to(values.dtype), response_mask),
            "values": _masked_mean(values, response_mask),
            "returns": _masked_mean(returns, response_mask),
            "explained_variance": explained_variance(values, returns, response_mask),
        }
    return loss, stats


def _masked_variance(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    mask = mask.to(x.dtype)
    count = mask.sum().clamp(min=1)
    mean = (x * mask).sum() / count
    return ((x - mean) ** 2 * mask).sum() / count


def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> float:
    """1 - Var(R - v) / Var(R) over masked tokens: 1 is a perfect critic, 0 no better than a constant."""
    var_returns = float(_masked_variance(returns.detach(), mask))
    if var_returns == 0:
        return float("nan")
    return 1 - float(_masked_variance((returns - values).detach(), mask)) / var_returns
