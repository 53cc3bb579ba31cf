"""What each algorithm's actor (and critic) minimises, as a registry of small objects over tensors.

The actor's train worker (train/workers.py) owns the generic update — shuffled mini-batches,
micro-batches whose gradients add up to the mini-batch's, clipping, optimizer step — and asks an
`Objective` for the three algorithm-specific pieces:

    prepare(batch)                 -> batch with training targets (advantages) / rows reordered
    normaliser(mini)               -> the count a mini-batch loss is averaged over
    loss(logprobs, micro, norm)    -> (this micro-batch's share of the mini-batch loss, stats)

Objectives (`OBJECTIVES[algorithm.name](algorithm_section)`):

* `PolicyGradient` (grpo, rloo, reinforce_pp, ppo): token advantages from
  `advantages.ADVANTAGE_ESTIMATORS[name]` (the one algorithm -> estimator map), then
  the clipped surrogate `clipped_policy_loss` (+ k3 KL to the reference when `kl_in == "loss"`),
  each micro-batch's share of the mini-batch aggregate from `losses.aggregation.share_of`.
  GRPO / RLOO: group baselines; REINFORCE++: batch-whitened discounted returns of the outcome
  reward (− kl_coef·KL per token when `kl_in == "reward"`); PPO: GAE over the critic's values
  (`ppo_targets`, shared with the critic's train call) and optional whitening.
* `DirectPreference` (online_dpo, dpo): rows are arranged as [chosen₀, rejected₀, chosen₁, ...];
  online DPO first picks, per prompt, the max-reward sample as chosen and the min-reward one as
  rejected (`select_pairs`; prompts whose samples all tie drop out). Loss: `dpo_loss` (sigmoid or
  IPO) on summed sequence log-probs under the plain model (temperature 1, no filtering), against
  the frozen reference's.

Batch fields follow algorithms/graphs.py; PPO adds `values` [N, T] (critic, aligned with tokens); the
actor worker may add `tis_weights` [N, T] (truncated importance weights, rollout vs trainer kernels).
Left out: entropy bonus, per-token DPO variants, KTO / ORPO / SimPO, sequence-level PPO ratios.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from fastrlhf.algorithms.advantages import ADVANTAGE_ESTIMATORS, AdvantageInputs, ppo_advantages_and_returns
from fastrlhf.algorithms.losses.aggregation import aggregate_count, share_of, share_of_mean
from fastrlhf.algorithms.losses.dpo import dpo_loss, select_pairs
from fastrlhf.algorithms.losses.policy import clipped_policy_loss
from fastrlhf.dataflow.batch import Batch


# ---------------------------------------------------------------------------- advantages
def advantage_inputs(batch: Batch, cfg) -> AdvantageInputs:
    """The estimators' inputs from a batch; token_kl only when the KL lives in the reward (`kl_in`)."""
    token_kl = None
    if "ref_logprobs" in batch and cfg.kl_in == "reward":
        token_kl = batch["logprobs"] - batch["ref_logprobs"]  # k1 per token, on samples of the behaviour policy
    return AdvantageInputs(rewards=batch["rewards"].float(),
                           group_index=batch["prompt_index"] if "prompt_index" in batch else None,
                           response_mask=batch["response_mask"], token_kl=token_kl,
                           values=batch["values"] if "values" in batch else None)


def ppo_targets(batch: Batch, cfg) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO (advantages, returns), both [N, T], for the actor and the critic alike.

    Token rewards: the sequence reward on the last response token, minus kl_coef·(logp − ref) on
    every response token when the KL lives in the reward (`kl_in == "reward"`, InstructGPT).
    Advantages are whitened over the batch when `whiten_advantages`; returns are not.
    """
    return ppo_advantages_and_returns(advantage_inputs(batch, cfg), cfg)


# ---------------------------------------------------------------------------- objectives
@dataclass
class PolicyGradient:
    """Clipped policy-gradient objective with advantages from `ADVANTAGE_ESTIMATORS[cfg.name]`."""

    cfg: object
    rows_per_unit: int = 1
    uses_sampling_distribution: bool = True  # log-probs under temperature / top-k / top-p

    def prepare(self, batch: Batch) -> Batch:
        advantages = ADVANTAGE_ESTIMATORS[self.cfg.name](advantage_inputs(batch, self.cfg), self.cfg)
        return batch.update({"advantages": advantages})

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
            token_weights=micro["tis_weights"] if "tis_weights" in micro else None,
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
        share = share_of_mean(loss, len(micro) / 2, normaliser)  # mean over the mini-batch's pairs
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
