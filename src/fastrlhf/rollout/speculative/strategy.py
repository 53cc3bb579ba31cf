"""Workload-aware draft length: pick γ each engine step from a cost table and the acceptance rate.

With acceptance rate α, a verification pass of 1 + γ tokens commits on average
    E(γ) = (1 − α^(γ+1)) / (1 − α)                 tokens per sequence     (PAPERS.md §1)
and costs t(B, 1 + γ) seconds for B running sequences (γ = 0 is plain decoding, E = 1). The step
takes the γ maximising committed tokens per second, B·E(γ) / t(B, 1 + γ).

- α: exponential moving average of accepted / drafted over verification passes (prior 0.5).
- t(B, T): measured wall seconds of each pass, kept as an exponential moving average per
  (B bucket = next power of two, T); a (B, T) never measured is tried once before it is trusted
  (optimistic exploration), so the table fills itself from the run's own steps — no start-up
  profiling pass. Timing is injectable (`clock`) so the choice is testable.
Whatever γ is chosen, samples do not change (verify.py): the strategy only moves speed.

Left out: a start-up profile, per-drafter acceptance (one drafter so far), the RLHFSpec/TLT batch
buckets as priors, migration between workers.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from fastrlhf.rollout.speculative.verify import Speculator


def expected_tokens(alpha: float, gamma: int) -> float:
    """E(γ) = (1 − α^(γ+1)) / (1 − α); γ + 1 when α = 1."""
    if alpha >= 1.0:
        return gamma + 1.0
    return (1.0 - alpha ** (gamma + 1)) / (1.0 - alpha)


def batch_bucket(batch: int) -> int:
    return 1 << max(batch - 1, 0).bit_length()


@dataclass
class AdaptiveSpeculator(Speculator):
    gammas: tuple[int, ...] = (0, 1, 2, 4, 8)
    smoothing: float = 0.3
    alpha: float = 0.5
    clock: object = time.perf_counter
    seconds: dict[tuple[int, int], float] = field(default_factory=dict)  # (B bucket, T) → EMA seconds
    chosen: list[int] = field(default_factory=list)  # γ per step (for logs and tests)

    def decode(self, engine, active: list[int]) -> None:
        gamma = self.choose(len(active))
        self.chosen.append(gamma)
        drafted, accepted = self.stats.drafted, self.stats.accepted
        started = self.clock()
        if gamma == 0:
            engine.decode_one(active)
        else:
            self.gamma = gamma
            super().decode(engine, active)
        self._record(len(active), 1 + gamma, self.clock() - started)
        if self.stats.drafted > drafted:
            rate = (self.stats.accepted - accepted) / (self.stats.drafted - drafted)
            self.alpha += self.smoothing * (rate - self.alpha)

    def choose(self, batch: int) -> int:
        bucket = batch_bucket(batch)
        unmeasured = [g for g in self.gammas if (bucket, 1 + g) not in self.seconds]
        if unmeasured:
            return unmeasured[0]
        return max(self.gammas, key=lambda g: batch * expected_tokens(self.alpha, g) / self.seconds[(bucket, 1 + g)])

    def _record(self, batch: int, tokens: int, seconds: float) -> None:
        key = (batch_bucket(batch), tokens)
        old = self.seconds.get(key)
        self.seconds[key] = seconds if old is None else old + self.smoothing * (seconds - old)
