"""Clipped policy-gradient loss (PPO / GRPO / DAPO family) as a pure function.

Per response token t of sample i (DAPO eq. 8 with GRPO's KL term, DeepSeekMath eq. 3-4):

    ratio_it         = exp(log pi_theta(o_it) - log pi_old(o_it))
    clipped_ratio_it = clip(ratio_it, 1 - clip_low, 1 + clip_high)
    policy_loss_it   = -min(ratio_it * A_it, clipped_ratio_it * A_it)
    kl_it            = exp(ref_it - logp_it) - (ref_it - logp_it) - 1        (k3 estimator of
                       KL(pi_theta || pi_ref), Schulman 2020; >= 0, unbiased)
    loss             = aggregate(w_it * policy_loss_it + kl_coef * kl_it, response_mask)

w_it are optional per-token importance weights, 1 by default. With `tis_weights` (below) they
are the truncated importance-sampling correction between the rollout engine's and the trainer's
kernels (Yao et al. 2025, "Your efficient RL framework secretly brings you off-policy RL training"):
when pi_old is recomputed by the trainer, w_it = min(pi_old(o_it) / pi_rollout(o_it), C), detached.

`clip_low == clip_high` is PPO's symmetric clip; `clip_high > clip_low` is DAPO's clip-higher
(e.g. 0.2 / 0.28). `aggregation` is a name from `AGGREGATIONS` (token_mean: DAPO, sequence_mean:
GRPO, token_sum_norm: Dr. GRPO) or any `fn(values [N, T], mask [N, T]) -> scalar`, such as
`share_of(mini_batch_count, name)`, a micro-batch's share of a mini-batch aggregate.

Statistics (floats, token means over the response mask regardless of the loss aggregation):
    loss, policy_loss (aggregated like the loss), ratio (mean), clip_fraction (share of tokens whose
    gradient the clip removes: ratio < 1 - clip_low with A < 0, or ratio > 1 + clip_high with A > 0;
    also split into clip_fraction_low / clip_fraction_high), approx_kl (k3 estimate of
    KL(pi_old || pi_theta): mean of (ratio - 1) - log ratio), and when their inputs are given
    kl_ref (mean k3 to the reference) and entropy (mean entropy of softmax(logits); pass the logits
    the sampler used, i.e. already divided by the temperature).

Left out: dual-clip PPO (a lower bound on negative-advantage losses), entropy bonus in the loss
(entropy is only logged), sequence-level ratios (GSPO), masking (rather than truncating) tokens
with large rollout / trainer mismatch.
"""

from __future__ import annotations

import torch

from fastrlhf.algorithms.losses.aggregation import Aggregation, resolve


def k3_kl(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """Per-token k3 estimate of KL(pi_theta || pi_ref) on samples from pi_theta: e^x - x - 1, x = ref - logp."""
    log_ratio = ref_logprobs - logprobs
    return torch.exp(log_ratio) - log_ratio - 1


def mean_k3_kl(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, response_mask: torch.Tensor) -> float:
    """Mean of `k3_kl` over response tokens: the run's logged `kl` (samples of the behaviour policy)."""
    return _masked_mean(k3_kl(logprobs, ref_logprobs), response_mask)


def tis_weights(old_logprobs: torch.Tensor, rollout_logprobs: torch.Tensor, response_mask: torch.Tensor,
                cap: float) -> torch.Tensor:
    """[N, T] truncated importance weights min(exp(old − rollout), cap) on response tokens, 1 elsewhere;
    no gradient. A token whose log-prob is −inf on either side (outside a top-k / top-p set) gets 1."""
    with torch.no_grad():
        mask = response_mask.bool() & torch.isfinite(old_logprobs) & torch.isfinite(rollout_logprobs)
        log_w = torch.where(mask, old_logprobs - rollout_logprobs, torch.zeros_like(old_logprobs))
        return torch.exp(log_w).clamp(max=cap)


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """[N, T, V] -> [N, T] entropy of softmax(logits): logsumexp(z) - sum_v softmax(z)_v z_v."""
    dtype = torch.promote_types(logits.dtype, torch.float32)  # bf16/fp16 logits: compute in fp32
    log_probs = torch.log_softmax(logits, dim=-1, dtype=dtype)
    return -(log_probs.exp() * log_probs).sum(dim=-1)


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> float:
    values = values.detach()  # a statistic: float() of a graph-attached tensor warns
    mask = mask.to(values.dtype)
    return float((values * mask).sum() / mask.sum().clamp(min=1))


def _check_shapes(logprobs, old_logprobs, advantages, response_mask) -> torch.Tensor:
    """Validate shapes; return advantages as [N, T] (a [N] tensor is broadcast over tokens)."""
    if not (logprobs.shape == old_logprobs.shape == response_mask.shape) or logprobs.dim() != 2:
        raise ValueError(
            f"logprobs {tuple(logprobs.shape)}, old_logprobs {tuple(old_logprobs.shape)} and "
            f"response_mask {tuple(response_mask.shape)} must all be [N, T]"
        )
    if advantages.shape == logprobs.shape[:1]:
        advantages = advantages[:, None].expand_as(logprobs)
    if advantages.shape != logprobs.shape:
        raise ValueError(f"advantages {tuple(advantages.shape)} must be [N] or [N, T] = {tuple(logprobs.shape)}")
    return advantages


def clipped_policy_loss(
    logprobs: torch.Tensor,       # [N, T] log pi_theta of the sampled tokens (with grad)
    old_logprobs: torch.Tensor,   # [N, T] log pi_old, the behaviour policy that sampled them
    advantages: torch.Tensor,     # [N] or [N, T]
    response_mask: torch.Tensor,  # [N, T] 1 on response tokens
    *,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    aggregation: str | Aggregation = "token_mean",
    ref_logprobs: torch.Tensor | None = None,  # [N, T] log pi_ref
    kl_coef: float = 0.0,
    logits: torch.Tensor | None = None,        # [N, T, V] for the entropy statistic
    token_weights: torch.Tensor | None = None,  # [N, T] w_it (e.g. `tis_weights`), detached
) -> tuple[torch.Tensor, dict[str, float]]:
    """Clipped surrogate (+ optional k3 KL to the reference); returns (scalar loss, stats)."""
    advantages = _check_shapes(logprobs, old_logprobs, advantages, response_mask)
    aggregate = resolve(aggregation)
    log_ratio = logprobs - old_logprobs                                       # [N, T]
    ratio = torch.exp(log_ratio)                                              # [N, T]
    clipped_ratio = torch.clamp(ratio, 1 - clip_low, 1 + clip_high)           # [N, T]
    policy_losses = -torch.min(ratio * advantages, clipped_ratio * advantages)  # [N, T]
    stats: dict[str, float] = {}
    if token_weights is not None:
        policy_losses = policy_losses * token_weights
        stats["tis_weight"] = _masked_mean(token_weights, response_mask)
    token_losses = policy_losses
    if ref_logprobs is not None:
        kl = k3_kl(logprobs, ref_logprobs)                                    # [N, T]
        token_losses = token_losses + kl_coef * kl
        stats["kl_ref"] = _masked_mean(kl.detach(), response_mask)
    loss = aggregate(token_losses, response_mask)
    with torch.no_grad():
        stats.update(_ratio_stats(ratio, log_ratio, advantages, response_mask, clip_low, clip_high))
        stats["policy_loss"] = float(aggregate(policy_losses, response_mask))
        if logits is not None:
            stats["entropy"] = _masked_mean(entropy_from_logits(logits), response_mask)
    stats["loss"] = float(loss.detach())
    return loss, stats


def _ratio_stats(ratio, log_ratio, advantages, mask, clip_low, clip_high) -> dict[str, float]:
    clipped_low = (ratio < 1 - clip_low) & (advantages < 0)
    clipped_high = (ratio > 1 + clip_high) & (advantages > 0)
    return {
        "ratio": _masked_mean(ratio, mask),
        "clip_fraction": _masked_mean((clipped_low | clipped_high).float(), mask),
        "clip_fraction_low": _masked_mean(clipped_low.float(), mask),
        "clip_fraction_high": _masked_mean(clipped_high.float(), mask),
        "approx_kl": _masked_mean((ratio - 1) - log_ratio, mask),
    }
