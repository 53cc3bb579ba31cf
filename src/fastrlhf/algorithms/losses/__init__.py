"""Losses as pure functions of tensors and masks returning `(loss, stats)`; one file per family."""

from fastrlhf.algorithms.losses.aggregation import AGGREGATIONS, sequence_mean, token_mean, token_sum_norm
from fastrlhf.algorithms.losses.policy import clipped_policy_loss, entropy_from_logits, k3_kl

__all__ = [
    "AGGREGATIONS", "clipped_policy_loss", "entropy_from_logits", "k3_kl", "sequence_mean", "token_mean",
    "token_sum_norm",
]
