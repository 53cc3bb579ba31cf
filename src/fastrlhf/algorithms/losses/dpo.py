"""Direct preference losses (DPO, IPO) and online pair selection, as pure functions.

Inputs are *summed* sequence log-probs over each response's tokens, one entry per pair (P pairs):
c = log pi_theta(y_w | x), r = log pi_theta(y_l | x), and the same under the frozen reference.

    h = (c - r) - (ref_c - ref_r)                   (the log-ratio margin)

* sigmoid (DPO, Rafailov et al. 2023 eq. 7):  loss = mean_p -log sigma(beta * h_p)
* ipo     (IPO, Azar et al. 2023 eq. 17):     loss = mean_p (h_p - 1 / (2 * beta))^2
  (beta plays the role of the paper's tau.)

`DPO_LOSSES` maps a name to `fn(h [P], beta) -> per-pair losses [P]`; a trainer picks by name.

Statistics (floats): loss, rewards_chosen / rewards_rejected (means of the implicit rewards
beta * (log pi_theta - log pi_ref) of the chosen / rejected responses), reward_margin (mean of
their difference, = beta * mean h), reward_accuracy (share of pairs whose margin is > 0), pairs.
With P = 0 pairs the loss is a zero that still back-propagates (so a step can run) and the
statistics are 0.

`select_pairs` turns online samples into pairs (online DPO, Guo et al. 2024 "Direct language
model alignment from online AI feedback"; Noukhovitch et al. 2024, Async RLHF): within each prompt
group the highest-reward sample is chosen and the lowest-reward one rejected.

Left out: label smoothing / conservative DPO, length-normalised log-probs (IPO's reference
implementations often average per token: pass mean log-probs instead of sums for that), other
variants (KTO, SimPO, ORPO), and any pairing beyond best-vs-worst per group.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F


def _sigmoid_loss(h: torch.Tensor, beta: float) -> torch.Tensor:
    return -F.logsigmoid(beta * h)


def _ipo_loss(h: torch.Tensor, beta: float) -> torch.Tensor:
    return (h - 1 / (2 * beta)) ** 2


# name -> loss(h [P], beta) -> per-pair losses [P]
DPO_LOSSES: dict[str, Callable[[torch.Tensor, float], torch.Tensor]] = {
    "sigmoid": _sigmoid_loss,
    "ipo": _ipo_loss,
}


def dpo_loss(
    chosen_logprobs: torch.Tensor,        # [P] summed log pi_theta(y_w | x) (with grad)
    rejected_logprobs: torch.Tensor,      # [P] summed log pi_theta(y_l | x) (with grad)
    ref_chosen_logprobs: torch.Tensor,    # [P] summed log pi_ref(y_w | x)
    ref_rejected_logprobs: torch.Tensor,  # [P] summed log pi_ref(y_l | x)
    *,
    beta: float,
    loss_type: str = "sigmoid",
) -> tuple[torch.Tensor, dict[str, float]]:
    """DPO / IPO loss on P preference pairs; returns (scalar loss, stats)."""
    shapes = {tuple(t.shape) for t in (chosen_logprobs, rejected_logprobs, ref_chosen_logprobs, ref_rejected_logprobs)}
    if len(shapes) != 1 or len(next(iter(shapes))) != 1:
        raise ValueError(f"chosen / rejected / reference log-probs {sorted(shapes)} must all be [P]")
    if loss_type not in DPO_LOSSES:
        raise ValueError(f"unknown DPO loss_type {loss_type!r}; choose one of {sorted(DPO_LOSSES)}")
    chosen_log_ratio = chosen_logprobs - ref_chosen_logprobs.detach()        # [P]
    rejected_log_ratio = rejected_logprobs - ref_rejected_logprobs.detach()  # [P]
    h = chosen_log_ratio - rejected_log_ratio                                # [P]
    losses = DPO_LOSSES[loss_type](h, beta)                                  # [P]
    pairs = h.shape[0]
    loss = losses.mean() if pairs else h.sum() * 0.0
    with torch.no_grad():
        rewards_chosen = beta * chosen_log_ratio    # [P]
        rewards_rejected = beta * rejected_log_ratio  # [P]
        margin = rewards_chosen - rewards_rejected  # [P]
        stats = {
            "loss": float(loss),
            "rewards_chosen": _mean(rewards_chosen),
            "rewards_rejected": _mean(rewards_rejected),
            "reward_margin": _mean(margin),
            "reward_accuracy": _mean((margin > 0).to(margin.dtype)),
            "pairs": float(pairs),
        }
    return loss, stats


def _mean(x: torch.Tensor) -> float:
    return float(x.mean()) if x.numel() else 0.0


def select_pairs(
    rewards: torch.Tensor,      # [N] scalar reward per sample
    group_index: torch.Tensor,  # [N] prompt id of each sample (any integers)
) -> tuple[torch.Tensor, torch.Tensor]:  # chosen_rows [P], rejected_rows [P], int64
    """Best-vs-worst pair per group: rows of the max-reward (chosen) and min-reward (rejected) sample.

    Ties go to the first occurrence (lowest row); groups whose rewards are all equal (including
    single-sample groups) give no pair; pairs come in ascending order of group id.
    """
    if rewards.dim() != 1 or rewards.shape != group_index.shape:
        raise ValueError(f"rewards {tuple(rewards.shape)} and group_index {tuple(group_index.shape)} must both be [N]")
    if not bool(torch.isfinite(rewards).all()):
        raise ValueError("rewards must be finite to rank samples")
    _, ids = torch.unique(group_index, return_inverse=True)  # [N] contiguous group ids, sorted by id
    groups = int(ids.max()) + 1 if ids.numel() else 0
    group_max = rewards.new_full((groups,), -torch.inf).scatter_reduce(0, ids, rewards, "amax")  # [G]
    group_min = rewards.new_full((groups,), torch.inf).scatter_reduce(0, ids, rewards, "amin")   # [G]
    chosen = _first_row_where(rewards == group_max[ids], ids, groups)    # [G]
    rejected = _first_row_where(rewards == group_min[ids], ids, groups)  # [G]
    keep = group_max > group_min                                         # [G]
    return chosen[keep], rejected[keep]


def _first_row_where(condition: torch.Tensor, ids: torch.Tensor, groups: int) -> torch.Tensor:
    """[G] lowest row index of each group among rows where `condition` [N] holds."""
    rows = torch.arange(condition.shape[0], device=condition.device)
    candidates = torch.where(condition, rows, condition.shape[0])  # non-matching rows: N (never the min)
    first = torch.full((groups,), condition.shape[0], dtype=torch.long, device=condition.device)
    return first.scatter_reduce(0, ids, candidates, "amin")
