"""Workload-aware speculation: pick the drafter and γ each engine step from costs and acceptance.

With acceptance rate α_d of drafter d, a verification pass of 1 + γ tokens commits on average
    E(α, γ) = (1 − α^(γ+1)) / (1 − α)               tokens per sequence     (PAPERS.md §1)
and costs t_d(B, 1 + γ) seconds for B running sequences (drafting + verification; γ = 0 is plain
decoding, E = 1, no drafter). The step takes the (d, γ) maximising committed tokens per second,
B·E(α_d, γ) / t_d(B, 1 + γ).

- α_d: per drafter, an exponential moving average of its per-draft acceptance (SpecStats:
  accepted / (accepted + rejected), the chance a draft is accepted given the earlier ones were;
  prior 0.5), each step weighted by its evidence: smoothing × min(1, judged drafts / `evidence_drafts`), so a
  tail step with one sequence moves it little. An estimate would freeze once plain decoding wins
  (nothing drafts, nothing is learnt) — e.g. after a first epoch of unseen prompts, when the next
  epoch's earlier responses make drafting pay. So every `shadow_every`-th plain step asks each
  deterministic drafter (n-gram: no model call) for a one-token draft per sequence and compares it
  with the token plain decoding sampled: a free acceptance sample that keeps α_d current.
- t_d(B, T) = verify(B, T) + draft_d(B, γ): the actor's forward and the drafter's work, kept apart
  because they generalise differently. verify(B, T) (and plain decoding, T = 1) is profiled at
  start-up: at its first step the speculator times the verification forward for every B bucket
  (next power of two) up to the running batch and every T = 1 + γ (`profile`, a few dozen forwards
  on the slots' free cache positions), then refines each entry online with the measured wall time
  of real steps (exponential moving average). draft_d(B, γ) is measured online per (drafter,
  bucket, γ); a bucket not yet seen borrows the nearest measured bucket's time scaled by the batch
  ratio, and a drafter never measured counts as free — an optimistic prior that gets it tried once.
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

PLAIN = "plain"  # the cost-table name of γ = 0 (one-token decode step)
VERIFY = "verify"  # the cost-table name of the actor's verification forward of T = 1 + γ tokens


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
    seconds: dict[tuple[str, int, int], float] = field(default_factory=dict)  # (PLAIN|VERIFY, B bucket, T) → EMA s
    draft_seconds: dict[tuple[str, int, int], float] = field(default_factory=dict)  # (drafter, bucket, γ) → EMA s
    alphas: dict[str, float] = field(default_factory=dict)  # drafter → EMA acceptance
    per_drafter: dict[str, SpecStats] = field(default_factory=dict)
    chosen: list[int] = field(default_factory=list)  # γ per step (for logs and tests)
    chosen_drafters: list[str] = field(default_factory=list)  # drafter per step (PLAIN for γ = 0)
    chosen_batches: list[int] = field(default_factory=list)  # running sequences per step
    profile_at_start: bool = True
    evidence_drafts: int = 16  # drafts judged in a step for the acceptance EMA's full weight
    shadow_every: int = 8  # plain steps between shadow acceptance samples of deterministic drafters
    _plain_steps: int = 0
    _drafting: float = 0.0  # drafting seconds of the current step
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

    def drafters_with_memory(self) -> list:
        return [d for d in self.drafters.values() if hasattr(d, "extend")]

    def decode(self, engine, active: list[int]) -> None:
        if self.profile_at_start and batch_bucket(len(active)) > self.profiled_up_to:
            self.profile(engine, active)
        name, gamma = self.choose(len(active))
        self.chosen.append(gamma)
        self.chosen_drafters.append(name)
        self.chosen_batches.append(len(active))
        self.gamma = gamma
        before = SpecStats(**self.stats.__dict__)
        self._drafting = 0.0
        bucket = batch_bucket(len(active))
        if gamma == 0:
            self._plain_steps += 1
            shadow = self._shadow_drafts(engine, active) if self._plain_steps % self.shadow_every == 0 else {}
            started = self.clock()
            engine.decode_one(active)
            _ema(self.seconds, (PLAIN, bucket, 1), self.clock() - started, self.smoothing)
            self._score_shadow(engine, shadow)
            return
        started = self.clock()
        self.verify_with(self.drafters[name], gamma, engine, active)
        total = self.clock() - started
        _ema(self.seconds, (VERIFY, bucket, 1 + gamma), total - self._drafting, self.smoothing)
        _ema(self.draft_seconds, (name, bucket, gamma), self._drafting, self.smoothing)
        delta = SpecStats(**{k: v - before.__dict__[k] for k, v in self.stats.__dict__.items()})
        mine = self.per_drafter[name]
        for k, v in delta.__dict__.items():
            setattr(mine, k, getattr(mine, k) + v)
        self._update_alpha(name, delta.accepted, delta.accepted + delta.rejected)

    def _update_alpha(self, name: str, accepted: int, judged: int) -> None:
        if judged:
            weight = self.smoothing * min(1.0, judged / self.evidence_drafts)
            self.alphas[name] += weight * (accepted / judged - self.alphas[name])

    def _shadow_drafts(self, engine, active: list[int]) -> dict[str, list[tuple[int, int, int]]]:
        """Deterministic drafter → [(slot, output index, drafted token)] for a plain step."""
        out = {}
        for name, drafter in self.drafters.items():
            if not hasattr(drafter, "propose"):
                continue
            rows = []
            for slot, seq in zip(active, engine.running_sequences(active)):
                context = self._context(engine, seq)
                draft = self._propose(drafter, seq, context, 1)
                if draft:
                    rows.append((slot, len(context) - len(seq.prompt_ids), draft[0]))
            out[name] = rows
        return out

    def _score_shadow(self, engine, shadow) -> None:
        for name, rows in shadow.items():
            if rows:
                sampled = engine.output_tokens([r[0] for r in rows], [r[1] for r in rows])
                self._update_alpha(name, sum(t == r[2] for t, r in zip(sampled, rows)), len(rows))

    def _drafts(self, drafter, gamma, engine, slots, seqs):
        started = self.clock()
        draft = super()._drafts(drafter, gamma, engine, slots, seqs)
        self._drafting += self.clock() - started
        return draft

    def choose(self, batch: int) -> tuple[str, int]:
        """(drafter name, γ) for a step with `batch` running sequences; (PLAIN, 0) = no speculation."""
        bucket = batch_bucket(batch)
        options = [(PLAIN, 0)] * (0 in self.gammas) + [(d, g) for d in self.drafters for g in self.gammas if g > 0]
        costs = {o: self.cost(o[0], o[1], bucket) for o in options}
        unmeasured = [o for o, seconds in costs.items() if seconds is None]
        if unmeasured:
            return unmeasured[0]

        def rate(option):
            name, gamma = option
            alpha = self.alphas.get(name, 0.0)
            return batch * expected_tokens(alpha, gamma) / max(costs[option], 1e-12)

        return max(options, key=rate)

    def cost(self, name: str, gamma: int, bucket: int) -> float | None:
        """Estimated seconds of one step: plain decode, or verify(B, 1 + γ) + draft_d(B, γ)."""
        if gamma == 0:
            return _nearest(self.seconds, PLAIN, bucket, 1)
        verify = _nearest(self.seconds, VERIFY, bucket, 1 + gamma)
        if verify is None:
            return None
        return verify + (_nearest(self.draft_seconds, name, bucket, gamma, scale=True) or 0.0)

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
                fed = engine.next_tokens(slots)[:, None].expand(rows, 1 + gamma).contiguous()
                best = float("inf")
                for _ in range(repeats):
                    started = self.clock()
                    self._verify(engine, slots, fed, contiguous=bool(active[rows - 1] == rows - 1))
                    best = min(best, self.clock() - started)
                self.seconds.setdefault((PLAIN if gamma == 0 else VERIFY, bucket, 1 + gamma), best)
        self.profiled_up_to = max(self.profiled_up_to, top)


def _ema(table: dict, key, value: float, smoothing: float) -> None:
    old = table.get(key)
    table[key] = value if old is None else old + smoothing * (value - old)


def _nearest(table: dict, name: str, bucket: int, size: int, scale: bool = False) -> float | None:
    """table[(name, bucket, size)], else the nearest bucket's entry (× bucket ratio if `scale`), else None."""
    if (name, bucket, size) in table:
        return table[(name, bucket, size)]
    known = [b for (n, b, t) in table if n == name and t == size]
    if not known:
        return None
    nearest = min(known, key=lambda b: (abs(b.bit_length() - bucket.bit_length()), b))
    return table[(name, nearest, size)] * (bucket / nearest if scale else 1.0)
