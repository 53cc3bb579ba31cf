"""Losses as pure functions of tensors and masks returning `(loss, stats)`; one file per family."""

from fastrlhf.algorithms.losses.aggregation import (AGGREGATIONS, aggregate, aggregate_count, sequence_mean, share_of,
                                                    token_mean, token_sum_norm)
from fastrlhf.algorithms.losses.dpo import DPO_LOSSES, dpo_loss, select_pairs
from fastrlhf.algorithms.losses.policy import clipped_policy_loss, entropy_from_logits, k3_kl
from fastrlhf.algorithms.losses.reward_model import bradley_terry_loss
from fastrlhf.algorithms.losses.value import clipped_value_loss, explained_variance

__all__ = [
    "DPO_LOSSES", "clipped_value_loss", "dpo_loss", "explained_variance", "select_pairs",
    "AGGREGATIONS", "bradley_terry_loss", "clipped_policy_loss", "entropy_from_logits", "k3_kl", "sequence_mean", "token_mean",
    "token_sum_norm", "aggregate", "aggregate_count", "share_of",
]
