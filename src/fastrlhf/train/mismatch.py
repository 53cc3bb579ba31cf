"""Rollout-vs-trainer log-prob mismatch: how far the engine's log-probs of the sampled tokens are from
the trainer's, for the same weights, before the step's first update.

In fp32 both come from the same code on the same weights (≤ 1e-5, reduction order only). In bf16 /
fp16 the engine decodes from a low-precision copy with decode-shaped kernels while the trainer runs
autocast over fp32 masters, so they differ; that gap is what `algorithm.recompute_logprobs` and the
truncated importance weights (`losses.policy.tis_weights`) correct for.

Logged per step (response tokens whose log-prob is finite on both sides):
    logprob_diff           max |log π_trainer − log π_rollout|
    mismatch/abs_mean      mean |log π_trainer − log π_rollout|
    mismatch/ratio_mean    mean of π_trainer / π_rollout   (1 when they agree)
    mismatch/ratio_min, mismatch/ratio_max
"""

from __future__ import annotations

import torch


class Mismatch:
    """Running mismatch statistics over micro-batches."""

    def __init__(self):
        self.count = 0
        self.abs_sum = self.ratio_sum = 0.0
        self.abs_max, self.ratio_min, self.ratio_max = 0.0, float("inf"), 0.0

    def add(self, trainer: torch.Tensor, rollout: torch.Tensor, mask: torch.Tensor) -> None:
        """trainer, rollout log-probs and the response mask, all [N, T]."""
        with torch.no_grad():
            keep = mask.bool() & torch.isfinite(trainer) & torch.isfinite(rollout)
            n = int(keep.sum())
            if n == 0:
                return
            diff = (trainer.float() - rollout.float())[keep]
            ratio = diff.exp()
            self.count += n
            self.abs_sum += float(diff.abs().sum())
            self.ratio_sum += float(ratio.sum())
            self.abs_max = max(self.abs_max, float(diff.abs().max()))
            self.ratio_min = min(self.ratio_min, float(ratio.min()))
            self.ratio_max = max(self.ratio_max, float(ratio.max()))

    @classmethod
    def merged(cls, parts: list["Mismatch"]) -> "Mismatch":
        """The statistics over the union of the parts' tokens (data-parallel ranks)."""
        total = cls()
        for part in parts:
            total.count += part.count
            total.abs_sum += part.abs_sum
            total.ratio_sum += part.ratio_sum
            total.abs_max = max(total.abs_max, part.abs_max)
            total.ratio_min = min(total.ratio_min, part.ratio_min)
            total.ratio_max = max(total.ratio_max, part.ratio_max)
        return total

    def stats(self) -> dict[str, float]:
        if self.count == 0:
            return {}
        return {"logprob_diff": self.abs_max, "mismatch/abs_mean": self.abs_sum / self.count,
                "mismatch/ratio_mean": self.ratio_sum / self.count,
                "mismatch/ratio_min": self.ratio_min, "mismatch/ratio_max": self.ratio_max}
