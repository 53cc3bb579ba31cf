"""Vectorised sampling that returns the log-probs of the distribution it sampled from.

The *sampling distribution* for logits z at temperature T with top-k k and top-p p is

    π(x) ∝ exp(z_x / T)  restricted to the k largest z (top-k), then to the smallest set of tokens,
                          in decreasing probability, whose mass reaches p (top-p, the token that
                          crosses p included), renormalised.

`sampling_logprobs(logits, params)` returns log π for every token (−inf outside the kept set). The
rollout engine samples from it and the trainer recomputes it with the same function, so rollout and
training log-probs come from one piece of code (DESIGN decision 1). Greedy (T = 0) picks argmax and
reports the T = 1, unfiltered log-prob of that token.

Randomness is counter-based: the uniform for sequence s at step t is a hash of (seed_s, t, stream),
so a sequence's samples do not depend on which other sequences share its batch, on padding, or on
slot order. A token is drawn by inverse CDF (fp32): the first token whose cumulative probability
exceeds u · total.

Left out: repetition / frequency penalties, min-p, logit bias.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from fastrlhf.errors import UserError

_MASK64 = (1 << 64) - 1


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 1.0  # 0 → greedy
    top_k: int = 0  # 0 → off
    top_p: float = 1.0  # 1 → off
    max_new_tokens: int = 128
    stop_token_ids: tuple[int, ...] = field(default_factory=tuple)
    n: int = 1  # samples per prompt
    seed: int = 0

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise UserError(f"temperature must be ≥ 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise UserError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise UserError(f"top_k must be ≥ 0, got {self.top_k}")
        if self.max_new_tokens < 1:
            raise UserError(f"max_new_tokens must be ≥ 1, got {self.max_new_tokens}")
        if self.n < 1:
            raise UserError(f"n (samples per prompt) must be ≥ 1, got {self.n}")
        object.__setattr__(self, "stop_token_ids", tuple(int(t) for t in self.stop_token_ids))

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def sampling_logprobs(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """logits [..., V] → log π [..., V] of the sampling distribution (fp32; −inf where filtered)."""
    z = logits.float()
    if params.greedy:
        return torch.log_softmax(z, dim=-1)
    z = z / params.temperature
    if params.top_k and params.top_k < z.shape[-1]:
        kth = torch.topk(z, params.top_k, dim=-1).values[..., -1:]
        z = z.masked_fill(z < kth, float("-inf"))
    if params.top_p < 1.0:
        sorted_z, order = torch.sort(z, dim=-1, descending=True)
        sorted_p = torch.softmax(sorted_z, dim=-1)
        mass_before = torch.cumsum(sorted_p, dim=-1) - sorted_p  # mass of strictly more likely tokens
        drop_sorted = mass_before >= params.top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        z = z.masked_fill(drop, float("-inf"))
    return torch.log_softmax(z, dim=-1)


def token_logprobs(logits: torch.Tensor, tokens: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """log π(tokens): logits [..., V], tokens [...] → [...] (what the trainer recomputes)."""
    return sampling_logprobs(logits, params).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


def _splitmix64(x: torch.Tensor) -> torch.Tensor:
    """SplitMix64 finaliser on int64 tensors (wrap-around arithmetic; logical shifts via masking)."""
    def shr(v, n):
        return (v >> n) & ((1 << (64 - n)) - 1)

    x = x + _signed(0x9E3779B97F4A7C15)
    x = (x ^ shr(x, 30)) * _signed(0xBF58476D1CE4E5B9)
    x = (x ^ shr(x, 27)) * _signed(0x94D049BB133111EB)
    return x ^ shr(x, 31)


def _signed(u: int) -> int:
    u &= _MASK64
    return u - (1 << 64) if u >= 1 << 63 else u


def uniforms(seeds: torch.Tensor, counters: torch.Tensor, stream: int = 0) -> torch.Tensor:
    """Uniform(0, 1) float64 per row from (seed, counter, stream): [B] int64 × [B] int64 → [B].
    Device ops only (no host sync); `sample` uses them in fp32."""
    x = _splitmix64(seeds.long() * 0x5851F42D + _signed(stream * 0x632BE59BD9B4E019))
    x = _splitmix64(x ^ counters.long())
    return ((x >> 11) & ((1 << 53) - 1)).double().add_(0.5).mul_(2.0 ** -53)


def sample(logits: torch.Tensor, params: SamplingParams, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw one token per row. logits [B, V], u [B] uniforms → (tokens [B] int64, log π(tokens) [B] fp32).

    fp32 end to end (the math runs in fp32 whatever the logits' dtype): the inverse CDF is a float32
    cumsum of π. A zero-probability token never wins the search in the middle of the CDF (its
    cumulative value equals its predecessor's, which wins first), so the only rounding case is the
    end: u·total ≥ cdf[-1] (u rounds to 1 in fp32, or the cumsum's last step rounds down), which
    would point past the last token. That draw goes to the last token with positive probability
    (the first index where the cdf reaches its total). No host sync."""
    logp = sampling_logprobs(logits, params)  # [B, V] fp32
    if params.greedy:
        tokens = logp.argmax(dim=-1)
    else:
        cdf = torch.cumsum(logp.exp(), dim=-1)  # [B, V] fp32
        total = cdf[:, -1:].contiguous()  # [B, 1]
        target = u.to(device=cdf.device, dtype=cdf.dtype)[:, None] * total
        tokens = torch.searchsorted(cdf, target, right=True)
        last_kept = torch.searchsorted(cdf, total, right=False)  # first index holding the full mass
        tokens = torch.minimum(tokens, last_kept).squeeze(-1)
        # guard: never return a filtered (p = 0) token because of rounding at a boundary
        tokens = torch.where(torch.isneginf(logp.gather(-1, tokens[:, None]).squeeze(-1)), logp.argmax(-1), tokens)
    return tokens, logp.gather(-1, tokens[:, None]).squeeze(-1)
