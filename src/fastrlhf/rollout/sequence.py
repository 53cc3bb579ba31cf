"""`Sequence`: all per-request state of one generated sample, and what a finished one carries."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class Sequence:
    seq_id: int
    prompt_ids: list[int]
    prompt_index: int = 0  # which prompt of the generate call
    sample_index: int = 0  # which of the n samples of that prompt
    seed: int = 0  # drives this sequence's random stream (see sampler.uniforms)
    slot: int | None = None  # KV-cache slot while running
    policy_version: int = 0  # version of the weights that generated it (set at admission)
    # filled when finished
    token_ids: list[int] = field(default_factory=list)
    logprobs: torch.Tensor | None = None  # [len(token_ids)] fp32, log π of the sampling distribution
    finish_reason: str | None = None  # "stop" (a stop token, included) or "length"

    @property
    def prompt_len(self) -> int:
        return len(self.prompt_ids)

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None
