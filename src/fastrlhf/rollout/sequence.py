"""`Sequence`: all per-request state of one generated sample, and what a finished one carries.

An unfinished sequence taken out of an engine (`RolloutEngine.take`, sample migration) carries its
tokens and log-probs so far in `token_ids` / `logprobs` with `finish_reason` None; the engine it is
added to feeds `prefill_ids` through the model and continues from there — or, taken with
`take(with_kv=True)`, it also carries its live K/V in `kv`, which the next engine writes into its
slot instead of re-prefilling (`prefill_ids` is then empty: admission feeds nothing).

`kv` layout: one CPU tensor [layers, 2, length, kv_heads, head_dim] in the source cache's dtype —
index 0 of dim 1 is K, 1 is V; row j is the key / value of the sequence's token j (prompt, then
generated), rotary already applied, for j in [0, length) with length = prompt_len + len(token_ids) − 1
(the last generated token is not fed yet). Its size is length × `ModelConfig.kv_bytes_per_token(dtype
bytes)` (= 2 · layers · kv_heads · head_dim · dtype bytes per token)."""

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
    # migrating with its K/V (take(with_kv=True)): [layers, 2, length, kv_heads, head_dim] CPU, cache
    # dtype (see the module docstring); dropped once written into a slot
    kv: torch.Tensor | None = field(default=None, repr=False)

    @property
    def prompt_len(self) -> int:
        return len(self.prompt_ids)

    @property
    def prefill_ids(self) -> list[int]:
        """What admission feeds through the model: the prompt, plus — for a migrated, partly
        generated sequence — every generated token but the last (the last is fed by its next decode).
        Nothing for one that carries its K/V (`kv`): admission writes that instead."""
        if self.kv is not None:
            return []
        return self.prompt_ids + self.token_ids[:-1]

    @property
    def prefill_len(self) -> int:
        """len(prefill_ids): what the scheduler's prefill budget counts (0 for a sequence with `kv`)."""
        if self.kv is not None:
            return 0
        return self.prompt_len + max(len(self.token_ids) - 1, 0)

    @property
    def kv_len(self) -> int:
        """Positions of live K/V a running sequence holds, and the length its `kv` must have:
        prompt + tokens generated − 1 (the last generated token is fed by its next decode)."""
        return self.prompt_len + len(self.token_ids) - 1

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None
