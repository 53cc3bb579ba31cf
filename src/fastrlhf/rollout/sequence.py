"""`Sequence`: all per-request state of one generated sample, and what a finished one carries.

An unfinished sequence taken out of an engine (`RolloutEngine.take`, sample migration) carries its
tokens and log-probs so far in `token_ids` / `logprobs` with `finish_reason` None; the engine it is
added to feeds `prefill_ids` through the model and continues from there."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class Sequence:
    seq_id: int
    prompt_ids: list[int]
    prompt_index: int = 0  # the prompt's identity: its index in the generate call, or the caller's key
    sample_index: int = 0  # which of the n samples of that prompt
    seed: int = 0  # drives this sequence's random stream (see sampler.uniforms)
    slot: int | None = None  # KV-cache slot while running
    policy_version: int = 0  # version of the weights that generated it (set at admission)
    # filled when finished (or, so far, when taken out of an engine unfinished)
    token_ids: list[int] = field(default_factory=list)
    logprobs: torch.Tensor | None = None  # [len(token_ids)] fp32 CPU, log π of the sampling distribution
    finish_reason: str | None = None  # "stop" (a stop token, included) or "length"

    @property
    def prompt_len(self) -> int:
        return len(self.prompt_ids)

    @property
    def prefill_ids(self) -> list[int]:
        """What admission feeds through the model: the prompt, plus — for a migrated, partly
        generated sequence — every generated token but the last (the last is fed by its next decode)."""
        return self.prompt_ids + self.token_ids[:-1]

    @property
    def prefill_len(self) -> int:
        return self.prompt_len + max(len(self.token_ids) - 1, 0)

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None
