"""Workload-aware speculation: pick the drafter and γ each engine step from costs and acceptance.

With acceptance rate α_d of drafter d, a verification pass of 1 + γ tokens commits on average
    E(α, γ) = (1 − α^(γ+1)) / (1 − α)               tokens per sequence     (PAPERS.md §1)
and costs t_d(B, 1 + γ) seconds for B running sequences (drafting + verification; γ = 0 is plain
decoding, E = 1, no drafter). The step takes the (d, γ) maximising committed tokens per second,
B·E(α_d, γ) / t_d(B, 1 + γ).

- α_d: per drafter, an exponential moving average of accepted / drafted over its passes (prior 0.5).
- t_d(B, T): profiled at start-up, refined online. At its first step the speculator times the
  actor's verification forward for every B bucket (next power of two) up to the running batch and
  every T = 1 + γ (`profile`, a few dozen forwards on the slots' free cache positions); that seeds
  plain decoding (T = 1) and every drafter (verification only: drafting is taken as free until
  measured, an optimistic prior). Each real step then updates an exponential moving average per
  (drafter, B bucket, T) with its measured wall time, drafting included. A bucket without an entry
  borrows the nearest bucket's; only an option never timed at all is tried once first.
  Timing is injectable (`clock`) so the choice is testable.
Whatever is chosen, the sample distribution does not change (verify.py): the strategy only moves
speed. With deterministic drafters only, not even the tokens change.

Left out: the RLHFSpec/TLT batch buckets as priors, ε-greedy re-exploration of stale entries,
migration between workers.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from fastrlhf.rollout.speculative.verify import Speculator, SpecStats

PLAIN = "plain"  # the cost-table name of γ = 0


def expected_tokens(alpha: float, gamma: int) -> float:
    """E(γ) = (1 − α^(γ+1)) / (1 − α); γ + 1 when α = 1."""
    if alpha >= 1.0:
        return gamma + 1.0
    return (1.0 - alpha ** (gamma + 1)) / (1.0 - alpha)


def batch_bucket(batch: int) -> int:
    return 1 << max(batch - 1, 0).bit_length()


def drafter_name(drafter) -> str:
    return getattr(drafter, "name", type(drafter).__name__)


@dataclass
class AdaptiveSpeculator(Speculator):
    """`drafter` (and any `others`, name → drafter) compete with each other and with plain decoding."""

    others: dict[str, object] = field(default_factory=dict)
    gammas: tuple[int, ...] = (0, 1, 2, 4, 8)
    smoothing: float = 0.3
    alpha_prior: float = 0.5
    clock: object = time.perf_counter
    seconds: dict[tuple[str, int, int], float] = field(default_factory=dict)  # (drafter, B bucket, T) → EMA s
    alphas: dict[str, float] = field(default_factory=dict)  # drafter → EMA acceptance
    per_drafter: dict[str, SpecStats] = field(default_factory=dict)
    chosen: list[int] = field(default_factory=list)  # γ per step (for logs and tests)
    chosen_drafters: list[str] = field(default_factory=list)  # drafter per step (PLAIN for γ = 0)
    profile_at_start: bool = True
    profiled_up_to: int = 0  # largest B bucket profiled so far

    def __post_init__(self) -> None:
        self.drafters = {drafter_name(self.drafter): self.drafter, **self.others}
        for name in self.drafters:
            self.alphas.setdefault(name, self.alpha_prior)
            self.per_drafter.setdefault(name, SpecStats())

    @property
    def alpha(self) -> float:
        """Acceptance estimate of the main drafter."""
        return self.alphas[drafter_name(self.drafter)]

    def begin(self) -> None:
        super().begin()
        for drafter in self.others.values():
            drafter.reset()

    def decode(self, engine, active: list[int]) -> None:
        if self.profile_at_start and batch_bucket(len(active)) > self.profiled_up_to:
            self.profile(engine, active)
        name, gamma = self.choose(len(active))
        self.chosen.append(gamma)
        self.chosen_drafters.append(name)
        self.gamma = gamma
        before = SpecStats(**self.stats.__dict__)
        started = self.clock()
        if gamma == 0:
            engine.decode_one(active)
        else:
            self.verify_with(self.drafters[name], gamma, engine, active)
        self._record(name, len(active), 1 + gamma, self.clock() - started)
        if gamma:
            delta = SpecStats(**{k: v - before.__dict__[k] for k, v in self.stats.__dict__.items()})
            mine = self.per_drafter[name]
            for k, v in delta.__dict__.items():
                setattr(mine, k, getattr(mine, k) + v)
            if delta.drafted:
                self.alphas[name] += self.smoothing * (delta.accepted / delta.drafted - self.alphas[name])

    def choose(self, batch: int) -> tuple[str, int]:
        """(drafter name, γ) for a step with `batch` running sequences; (PLAIN, 0) = no speculation."""
        bucket = batch_bucket(batch)
        options = [(PLAIN, 0)] * (0 in self.gammas) + [(d, g) for d in self.drafters for g in self.gammas if g > 0]
        costs = {o: self._seconds(o[0], bucket, 1 + o[1]) for o in options}
        unmeasured = [o for o, seconds in costs.items() if seconds is None]
        if unmeasured:
            return unmeasured[0]

        def rate(option):
            name, gamma = option
            alpha = self.alphas.get(name, 0.0)
            return batch * expected_tokens(alpha, gamma) / costs[option]

        return max(options, key=rate)

    def _seconds(self, name: str, bucket: int, tokens: int) -> float | None:
        """t_d(bucket, T): this bucket's entry, else the nearest measured bucket's, else None."""
        if (name, bucket, tokens) in self.seconds:
            return self.seconds[(name, bucket, tokens)]
        known = [b for (n, b, t) in self.seconds if n == name and t == tokens]
        if not known:
            return None
        nearest = min(known, key=lambda b: (abs(b.bit_length() - bucket.bit_length()), b))
        return self.seconds[(name, nearest, tokens)]

    @torch.no_grad()
    def profile(self, engine, active: list[int], repeats: int = 2) -> None:
        """Time the actor's verification forward for B buckets up to len(active) and each T = 1 + γ.

        Uses the running slots' cache beyond their lengths (written, never read: verify.py's rollback
        argument), so it is safe mid-generation. Seeds plain decoding and every drafter's entries
        that are not measured yet (real steps refine them)."""
        top = batch_bucket(len(active))
        buckets = [1 << i for i in range(top.bit_length()) if (1 << i) > self.profiled_up_to]
        slots_all = torch.tensor(active, device=engine.device)
        for bucket in buckets:
            rows = min(bucket, len(active))
            slots = slots_all[:rows]
            for gamma in sorted({0, *self.gammas}):
                fed = engine.last_token[slots][:, None].expand(rows, 1 + gamma).contiguous()
                best = float("inf")
                for _ in range(repeats):
                    started = self.clock()
                    self._verify(engine, slots, fed, contiguous=bool(active[rows - 1] == rows - 1))
                    best = min(best, self.clock() - started)
                for name in ([PLAIN] if gamma == 0 else list(self.drafters)):
                    self.seconds.setdefault((name, bucket, 1 + gamma), best * (len(active) / rows if rows < bucket else 1.0))
        self.profiled_up_to = max(self.profiled_up_to, top)

    def _record(self, name: str, batch: int, tokens: int, seconds: float) -> None:
        key = (name, batch_bucket(batch), tokens)
        old = self.seconds.get(key)
        self.seconds[key] = seconds if old is None else old + self.smoothing * (seconds - old)
