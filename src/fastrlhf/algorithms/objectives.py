"""What each algorithm's actor (and critic) minimises, as a registry of small objects over tensors.

The actor's train worker (train/workers.py) owns the generic update — shuffled mini-batches,
micro-batches whose gradients add up to the mini-batch's, clipping, optimizer step — and asks an
`Objective` for the three algorithm-specific pieces:

    prepare(batch)                 -> batch with training targets (advantages) / rows reordered
    normaliser(mini)               -> the count a mini-batch loss is averaged over
    loss(logprobs, micro, norm)    -> (this micro-batch's share of the mini-batch loss, stats)

Objectives (`OBJECTIVES[algorithm.name](algorithm_section)`):

* `PolicyGradient` (grpo, rloo, reinforce_pp, ppo): token advantages from `ADVANTAGES[name]`, then
  the clipped surrogate `clipped_policy_loss` (+ k3 KL to the reference when `kl_in == "loss"`).
  GRPO / RLOO: group baselines; REINFORCE++: batch-whitened discounted returns of the outcome
  reward (− kl_coef·KL per token when `kl_in == "reward"`); PPO: GAE over the critic's values
  (`ppo_targets`, shared with the critic's train call) and optional whitening.
* `DirectPreference` (online_dpo, dpo): rows are arranged as [chosen₀, rejected₀, chosen₁, ...];
  online DPO first picks, per prompt, the max-reward sample as chosen and the min-reward one as
  rejected (`select_pairs`; prompts whose samples all tie drop out). Loss: `dpo_loss` (sigmoid or
  IPO) on summed sequence log-probs under the plain model (temperature 1, no filtering), against
  the frozen reference's.

Batch fields follow algorithms/graphs.py; PPO adds `values` [N, T] (critic, aligned with tokens).
Left out: entropy bonus, per-token DPO variants, KTO / ORPO / SimPO, sequence-level PPO ratios.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from fastrlhf.algorithms.advantages import (ADVANTAGE_ESTIMATORS, AdvantageInputs, gae, ppo_token_rewards,
                                            reinforce_pp_advantages, whiten)
from fastrlhf.algorithms.losses.dpo import dpo_loss, select_pairs
from fastrlhf.algorithms.losses.policy import clipped_policy_loss
from fastrlhf.dataflow.batch import Batch


# ---------------------------------------------------------------------------- advantages
def ppo_targets(batch: Batch, cfg) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO (advantages, returns), both [N, T]: GAE over per-token rewards and the critic's values.

    Token rewards: the sequence reward on the last response token, minus kl_coef·(logp − ref) on
    every response token when the KL lives in the reward (`kl_in == "reward"`, InstructGPT).
    Advantages are whitened over the batch when `whiten_advantages`; returns are not.
    """
    mask = batch["response_mask"]
    ref = batch["ref_logprobs"] if ("ref_logprobs" in batch and cfg.kl_in == "reward") else None
    token_rewards = ppo_token_rewards(batch["rewards"].float(), batch["logprobs"], ref, mask,
                                      kl_coef=cfg.kl_coef if ref is not None else 0.0)
    advantages, returns = gae(token_rewards, batch["values"], mask, gamma=cfg.gae_gamma, lam=cfg.gae_lambda)
    if cfg.whiten_advantages:
        advantages = whiten(advantages, mask)
    return advantages, returns


def _group_inputs(batch: Batch) -> AdvantageInputs:
    return AdvantageInputs(rewards=batch["rewards"].float(), group_index=batch["prompt_index"],
                           response_mask=batch["response_mask"])


def _grpo(batch: Batch, cfg) -> torch.Tensor:
    return ADVANTAGE_ESTIMATORS["grpo" if cfg.normalize_std else "dr_grpo"](_group_inputs(batch))


def _rloo(batch: Batch, cfg) -> torch.Tensor:
    return ADVANTAGE_ESTIMATORS["rloo"](_group_inputs(batch))


def _reinforce_pp(batch: Batch, cfg) -> torch.Tensor:
    token_kl = None
    if "ref_logprobs" in batch and cfg.kl_in == "reward":
        token_kl = batch["logprobs"] - batch["ref_logprobs"]  # k1 per token, on samples of the behaviour policy
    return reinforce_pp_advantages(batch["rewards"].float(), batch["response_mask"], token_kl,
                                   kl_coef=cfg.kl_coef if token_kl is not None else 0.0)


def _ppo(batch: Batch, cfg) -> torch.Tensor:
    return ppo_targets(batch, cfg)[0]


# algorithm name -> (batch, algorithm section) -> token advantages [N, T]
ADVANTAGES: dict[str, Callable[[Batch, object], torch.Tensor]] = {
    "grpo": _grpo,
    "rloo": _rloo,
    "reinforce_pp": _reinforce_pp,
    "ppo": _ppo,
}


# ---------------------------------------------------------------------------- objectives
def share_of(denominator: float, aggregation: str):
    """This micro-batch's part of the mini-batch aggregate: Σ(values) / (mini-batch count)."""
    def token_share(values, mask):
        return (values * mask.to(values.dtype)).sum() / max(denominator, 1.0)

    def sequence_share(values, mask):
        mask = mask.to(values.dtype)
        per_row = (values * mask).sum(1) / mask.sum(1).clamp(min=1)
        return per_row.sum() / max(denominator, 1.0)

    return {"token_mean": token_share, "sequence_mean": sequence_share}[aggregation]


def aggregate_count(mask: torch.Tensor, aggregation: str) -> float:
    """What a mini-batch loss is averaged over: response tokens, or sequences with a response."""
    return float(mask.sum()) if aggregation == "token_mean" else float((mask.sum(1) > 0).sum())


@dataclass
class PolicyGradient:
    """Clipped policy-gradient objective with advantages from `ADVANTAGES[cfg.name]`."""

    cfg: object
    rows_per_unit: int = 1
    uses_sampling_distribution: bool = True  # log-probs under temperature / top-k / top-p

    def prepare(self, batch: Batch) -> Batch:
        return batch.update({"advantages": ADVANTAGES[self.cfg.name](batch, self.cfg)})

    def normaliser(self, mini: Batch) -> float:
        return aggregate_count(mini["response_mask"], self.cfg.loss_aggregation)

    def stat_weight(self, micro: Batch, mini: Batch) -> float:
        return float(micro["response_mask"].sum()) / max(float(mini["response_mask"].sum()), 1.0)

    def loss(self, logprobs: torch.Tensor, micro: Batch, normaliser: float):
        use_kl = self.cfg.kl_in == "loss" and "ref_logprobs" in micro and self.cfg.kl_coef > 0
        return clipped_policy_loss(
            logprobs, micro["logprobs"], micro["advantages"], micro["response_mask"],
            clip_low=self.cfg.clip_low, clip_high=self.cfg.clip_high,
            aggregation=share_of(normaliser, self.cfg.loss_aggregation),
            ref_logprobs=micro["ref_logprobs"] if use_kl else None, kl_coef=self.cfg.kl_coef if use_kl else 0.0,
        )


@dataclass
class DirectPreference:
    """DPO on (chosen, rejected) row pairs; online: pairs picked by reward within each prompt's samples."""

    cfg: object
    online: bool
    rows_per_unit: int = 2
    uses_sampling_distribution: bool = False  # DPO's log-probs are the plain model's

    def prepare(self, batch: Batch) -> Batch:
        if not self.online:
            return batch  # already [chosen, rejected, chosen, rejected, ...]
        chosen, rejected = select_pairs(batch["rewards"].float(), batch["prompt_index"])
        rows = torch.stack([chosen, rejected], dim=1).reshape(-1)  # [2P] interleaved
        return batch.select(rows)

    def normaliser(self, mini: Batch) -> float:
        return len(mini) / 2  # pairs

    def stat_weight(self, micro: Batch, mini: Batch) -> float:
        return len(micro) / max(len(mini), 1)

    def loss(self, logprobs: torch.Tensor, micro: Batch, normaliser: float):
        sequence_logprobs = (logprobs * micro["response_mask"]).sum(1)  # [2P]
        ref = (micro["ref_logprobs"] * micro["response_mask"]).sum(1)   # [2P]
        loss, stats = dpo_loss(sequence_logprobs[0::2], sequence_logprobs[1::2], ref[0::2], ref[1::2],
                               beta=self.cfg.beta, loss_type=self.cfg.dpo_loss)
        share = loss * (len(micro) / 2) / max(normaliser, 1.0)  # mean over the mini-batch's pairs
        stats["loss"] = float(share.detach())
        return share, stats


OBJECTIVES: dict[str, Callable[[object], object]] = {
    "grpo": PolicyGradient,
    "rloo": PolicyGradient,
    "reinforce_pp": PolicyGradient,
    "ppo": PolicyGradient,
    "online_dpo": lambda cfg: DirectPreference(cfg, online=True),
    "dpo": lambda cfg: DirectPreference(cfg, online=False),
}

SUMMED_STATS = ("loss", "policy_loss", "pairs")  # already shares of the mini-batch total: add, don't average
