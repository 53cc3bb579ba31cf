"""Advantage estimators for policy-gradient RLHF, critic-free and GAE (pure functions of tensors).

Notation: N samples (rows), T token positions, `response_mask` [N, T] is 1 on generated tokens.
`group_index` [N] says which prompt each sample came from (the executor's `prompt_index`); any
integer ids work, they need not be contiguous.

* GRPO (Shao et al. 2024, DeepSeekMath eq. 3, outcome supervision):
      A_i = (r_i - mean(r_group)) / (std(r_group) + eps)
  std is the *sample* standard deviation (Bessel's n-1), as in the public GRPO implementations;
  a single-sample group has A_i = 0. eps = 1e-6 guards groups whose rewards are all equal (then
  A_i = 0 exactly, since the numerator is 0).
  Dr. GRPO (Liu et al. 2025, "Understanding R1-Zero-like training") drops the division:
      A_i = r_i - mean(r_group)                   (normalize_std=False)
* RLOO (Ahmadian et al. 2024, leave-one-out baseline):
      A_i = r_i - (1/(n-1)) * sum_{j != i} r_j = n/(n-1) * (r_i - mean(r_group))
  needs n >= 2 samples in every group.
* REINFORCE++ (Hu 2025): per-token reward = outcome reward on the last response token minus
  beta * KL_t on every response token; return G_t = sum_{s>=t} gamma^(s-t) r_s; advantages are
  the returns whitened over all response tokens of the batch:
      A_t = (G_t - mean(G)) / (std(G) + eps),  mean/std over masked tokens (population std).

`ADVANTAGE_ESTIMATORS` is the one map from an algorithm name (`algorithm.name`: grpo, rloo,
reinforce_pp, ppo) to its estimator, `estimator(AdvantageInputs, algorithm_section)` -> token
advantages [N, T] (GRPO / RLOO's sequence advantages broadcast over response tokens, 0 on padding).
The section supplies the options: normalize_std (GRPO; false = Dr. GRPO), kl_coef (REINFORCE++ and
PPO, used when `AdvantageInputs.token_kl` is given), gae_gamma / gae_lambda / whiten_advantages (PPO).

PPO with a critic (Schulman et al. 2017; rewards as in Ouyang et al. 2022, InstructGPT eq. 2):
* `ppo_token_rewards` puts the sequence score on the last response token and the "KL in the
  reward" penalty on every response token:
      r_t = score * [t is the last response token] - kl_coef * (log pi_old(o_t) - log pi_ref(o_t))
  (k1 estimator of KL(pi_old || pi_ref)).
* `gae` (Schulman et al. 2016, "High-dimensional continuous control using GAE", eq. 16):
      delta_t = r_t + gamma * V_{t+1} * m_{t+1} - V_t
      A_t     = delta_t + gamma * lam * A_{t+1} * m_{t+1}
      returns = A_t + V_t   (the lambda-return, target of the value loss)
  Positions are aligned with tokens as in algorithms/graphs.py: position t of `values` is
  V(state before token t is generated), i.e. the critic's output at position t-1 shifted onto
  token t. Response tokens are one contiguous run per row, right-padded; the value after the last
  response token is 0 (the episode ends there), which the factor m_{t+1} implements. Advantages
  and returns are 0 off the response; nothing flows back into `values` (they are detached).
* `whiten`: masked mean / population std over all response tokens of the batch, PPO's advantage
  normalisation (also used by REINFORCE++ above).

Left out: process supervision (per-step rewards), the choice of KL estimator for REINFORCE++ (the
caller passes `token_kl`; the paper uses k1 = log pi_old - log pi_ref), KL estimators other than
k1 in `ppo_token_rewards`, truncated episodes (a bootstrap value after the last token), and
adaptive KL controllers (the caller owns `kl_coef`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

GRPO_EPS = 1e-6
WHITEN_EPS = 1e-8


def _group_ids(rewards: torch.Tensor, group_index: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Flatten rewards to [N] with contiguous group ids 0..G-1; rewards [G, n] need no group_index."""
    if group_index is None:
        if rewards.dim() != 2:
            raise ValueError("pass group_index, or rewards shaped [groups, samples_per_group]")
        groups, per_group = rewards.shape
        ids = torch.arange(groups, device=rewards.device).repeat_interleave(per_group)
        return rewards.reshape(-1), ids
    if rewards.shape != group_index.shape or rewards.dim() != 1:
        raise ValueError(f"rewards {tuple(rewards.shape)} and group_index {tuple(group_index.shape)} must both be [N]")
    return rewards, torch.unique(group_index, return_inverse=True)[1]


def _group_stats(rewards: torch.Tensor, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-sample group mean, group sample std (0 for single-sample groups) and group size; all [N]."""
    groups = int(ids.max()) + 1 if ids.numel() else 0
    count = torch.zeros(groups, dtype=rewards.dtype, device=rewards.device).index_add_(0, ids, torch.ones_like(rewards))
    total = torch.zeros_like(count).index_add_(0, ids, rewards)
    mean = (total / count)[ids]  # [N]
    squares = torch.zeros_like(count).index_add_(0, ids, (rewards - mean) ** 2)
    var = squares / (count - 1).clamp(min=1)  # Bessel; single-sample groups: 0 / 1 = 0
    return mean, var.sqrt()[ids], count[ids]


def grpo_advantages(
    rewards: torch.Tensor,                 # [N] or [G, n]
    group_index: torch.Tensor | None = None,  # [N]
    *,
    normalize_std: bool = True,
    eps: float = GRPO_EPS,
) -> torch.Tensor:                         # same shape as rewards
    """GRPO group-normalised advantages; `normalize_std=False` gives Dr. GRPO's r - mean."""
    flat, ids = _group_ids(rewards, group_index)
    mean, std, _ = _group_stats(flat, ids)
    advantages = flat - mean
    if normalize_std:
        advantages = advantages / (std + eps)
    return advantages.reshape(rewards.shape)


def rloo_advantages(
    rewards: torch.Tensor,                 # [N] or [G, n]
    group_index: torch.Tensor | None = None,  # [N]
) -> torch.Tensor:                         # same shape as rewards
    """RLOO: reward minus the mean reward of the other samples of the same prompt."""
    flat, ids = _group_ids(rewards, group_index)
    mean, _, count = _group_stats(flat, ids)
    if bool((count < 2).any()):
        raise ValueError("RLOO needs at least 2 samples per prompt for its leave-one-out baseline")
    return (count / (count - 1) * (flat - mean)).reshape(rewards.shape)


def _last_token_position(response_mask: torch.Tensor) -> torch.Tensor:
    """[N] index of each row's last response token (rows without any: 0, masked out later)."""
    positions = torch.arange(response_mask.shape[1], device=response_mask.device)
    return (positions * response_mask.bool()).amax(dim=1)


def reinforce_pp_advantages(
    rewards: torch.Tensor,                 # [N] outcome reward per sample
    response_mask: torch.Tensor,           # [N, T]
    token_kl: torch.Tensor | None = None,  # [N, T] per-token KL estimate to the reference
    *,
    kl_coef: float = 0.0,
    gamma: float = 1.0,
    eps: float = WHITEN_EPS,
) -> torch.Tensor:                         # [N, T], 0 off the response
    """REINFORCE++ token advantages: discounted returns of (outcome - beta*KL), whitened over the batch."""
    token_rewards = _kl_penalised_rewards(rewards, response_mask, token_kl, kl_coef)  # [N, T]
    returns = torch.zeros_like(token_rewards)  # [N, T]
    running = torch.zeros_like(rewards)        # [N]
    for t in reversed(range(token_rewards.shape[1])):
        running = token_rewards[:, t] + gamma * running
        returns[:, t] = running
    return whiten(returns, response_mask, eps=eps)


def _outcome_on_last_token(scores: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
    """[N] scores -> [N, T] with each score on its row's last response token, 0 elsewhere."""
    mask = response_mask.to(scores.dtype)
    token_rewards = torch.zeros_like(mask)  # [N, T]
    token_rewards.scatter_(1, _last_token_position(response_mask)[:, None], scores[:, None])
    return token_rewards * mask  # rows without response tokens get nothing


def whiten(
    values: torch.Tensor,          # [N, T]
    mask: torch.Tensor,            # [N, T] 1 on the tokens that count
    *,
    shift_mean: bool = True,
    eps: float = WHITEN_EPS,
) -> torch.Tensor:                 # [N, T], 0 off the mask
    """(x - mean) / (std + eps) with mean and population std over all masked tokens of the batch.

    shift_mean=False keeps the batch mean: mean + (x - mean) / (std + eps) (only the spread is
    rescaled, as when whitening rewards rather than advantages).
    """
    mask = mask.to(values.dtype)
    count = mask.sum().clamp(min=1)
    mean = (values * mask).sum() / count
    std = (((values - mean) ** 2 * mask).sum() / count).sqrt()
    whitened = (values - mean) / (std + eps)
    if not shift_mean:
        whitened = whitened + mean
    return whitened * mask


def ppo_token_rewards(
    scores: torch.Tensor,               # [N] sequence score (reward model / reward function)
    logprobs: torch.Tensor,             # [N, T] behaviour-policy log-probs of the tokens
    ref_logprobs: torch.Tensor | None,  # [N, T] reference log-probs, or None for no KL term
    response_mask: torch.Tensor,        # [N, T]
    *,
    kl_coef: float,
) -> torch.Tensor:                      # [N, T], 0 off the response
    """InstructGPT's "KL in the reward": score on the last token, -kl_coef * k1 on every token."""
    k1 = None if ref_logprobs is None else logprobs - ref_logprobs  # [N, T]
    return _kl_penalised_rewards(scores, response_mask, k1, kl_coef)


def _kl_penalised_rewards(scores: torch.Tensor, response_mask: torch.Tensor, token_kl: torch.Tensor | None,
                          kl_coef: float) -> torch.Tensor:
    """[N, T]: each score on its row's last response token, minus kl_coef * token_kl on every response token."""
    token_rewards = _outcome_on_last_token(scores, response_mask)  # [N, T]
    if token_kl is None:
        return token_rewards
    return token_rewards - kl_coef * token_kl.detach() * response_mask.to(token_rewards.dtype)


def gae(
    token_rewards: torch.Tensor,  # [N, T] r_t, e.g. from ppo_token_rewards
    values: torch.Tensor,         # [N, T] V(state before token t), aligned with the tokens
    response_mask: torch.Tensor,  # [N, T] one contiguous right-padded run of 1s per row
    *,
    gamma: float,
    lam: float,
) -> tuple[torch.Tensor, torch.Tensor]:  # advantages [N, T], returns [N, T]; 0 off the response
    """Generalised advantage estimation over response tokens; the value after the last one is 0."""
    mask = response_mask.to(token_rewards.dtype)
    values = values.detach() * mask         # [N, T]
    rewards = token_rewards.detach() * mask  # [N, T]
    advantages = torch.zeros_like(rewards)   # [N, T]
    next_value = torch.zeros_like(rewards[:, 0])      # [N] V_{t+1} * m_{t+1}
    next_advantage = torch.zeros_like(rewards[:, 0])  # [N] A_{t+1} * m_{t+1}
    for t in reversed(range(mask.shape[1])):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        advantages[:, t] = (delta + gamma * lam * next_advantage) * mask[:, t]
        next_value, next_advantage = values[:, t], advantages[:, t]  # both already 0 off the mask
    returns = (advantages + values) * mask
    return advantages, returns


@dataclass(frozen=True)
class AdvantageInputs:
    """Everything any registered estimator may need, one row per sample."""

    rewards: torch.Tensor                      # [N] scalar reward per sample
    group_index: torch.Tensor | None           # [N] prompt id of each sample (GRPO / RLOO groups)
    response_mask: torch.Tensor                # [N, T] 1 on response tokens
    token_kl: torch.Tensor | None = None       # [N, T] k1 = log pi_old - log pi_ref per token; given only
                                               #   when the KL penalty lives in the reward (REINFORCE++, PPO)
    values: torch.Tensor | None = None         # [N, T] critic values aligned with tokens (PPO)


def ppo_advantages_and_returns(inputs: AdvantageInputs, cfg) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO (advantages, returns), both [N, T]: GAE over `ppo_token_rewards` and the critic's values.

    Advantages are whitened over the batch when `cfg.whiten_advantages`; returns (the critic's
    targets) are not.
    """
    kl_coef = cfg.kl_coef if inputs.token_kl is not None else 0.0
    token_rewards = _kl_penalised_rewards(inputs.rewards, inputs.response_mask, inputs.token_kl, kl_coef)
    advantages, returns = gae(token_rewards, inputs.values, inputs.response_mask, gamma=cfg.gae_gamma,
                              lam=cfg.gae_lambda)
    if cfg.whiten_advantages:
        advantages = whiten(advantages, inputs.response_mask)
    return advantages, returns


def _per_token(sequence_advantages: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
    """Broadcast [N] advantages over response tokens -> [N, T]."""
    return sequence_advantages[:, None] * response_mask.to(sequence_advantages.dtype)


def _grpo(inputs: AdvantageInputs, cfg) -> torch.Tensor:
    advantages = grpo_advantages(inputs.rewards, inputs.group_index, normalize_std=cfg.normalize_std)
    return _per_token(advantages, inputs.response_mask)


def _rloo(inputs: AdvantageInputs, cfg) -> torch.Tensor:
    return _per_token(rloo_advantages(inputs.rewards, inputs.group_index), inputs.response_mask)


def _reinforce_pp(inputs: AdvantageInputs, cfg) -> torch.Tensor:
    kl_coef = cfg.kl_coef if inputs.token_kl is not None else 0.0
    return reinforce_pp_advantages(inputs.rewards, inputs.response_mask, inputs.token_kl, kl_coef=kl_coef)


def _ppo(inputs: AdvantageInputs, cfg) -> torch.Tensor:
    return ppo_advantages_and_returns(inputs, cfg)[0]


# algorithm name -> estimator(AdvantageInputs, algorithm section) -> token advantages [N, T]
ADVANTAGE_ESTIMATORS: dict[str, Callable[[AdvantageInputs, object], torch.Tensor]] = {
    "grpo": _grpo,                  # normalize_std=False: Dr. GRPO
    "rloo": _rloo,
    "reinforce_pp": _reinforce_pp,  # reads kl_coef when token_kl is given
    "ppo": _ppo,                    # needs values; reads kl_coef, gae_gamma, gae_lambda, whiten_advantages
}
