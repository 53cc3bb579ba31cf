"""Speculative rollouts in a training run: the speculator `rollout.speculative` asks for, and the
refresh of the draft model so that it keeps tracking the actor.

`rollout.speculative`:
    off       plain decoding
    ngram     NGramDrafter (sequence + sibling samples; deterministic: tokens identical to plain)
    draft     DraftModelDrafter over `truncated_draft(actor, rollout.draft_layers)`
    adaptive  AdaptiveSpeculator over both (n-gram and draft model compete with plain decoding)
`rollout.gamma` > 0 fixes γ (adaptive then only chooses the drafter); 0 lets AdaptiveSpeculator
choose γ ∈ {0, 1, 2, 4, 8} per engine step from measured cost and acceptance.

Refresh (every `rollout.draft_refresh_every` steps, after the step's update): the draft is distilled
(rollout/speculative/distill.py, forward KL to the actor's sampling distribution) towards the
actor's *current* weights on the rollouts the actor generated in that step, `draft_epochs` passes in
micro-batches of `train.micro_batch_size` rows (the actor's targets are computed per micro-batch, so
memory stays at one micro-batch of [rows, T, V]). One AdamW is kept across refreshes. Logged:
`spec/draft_kl` (mean KL of each micro-batch of the first pass *before* the draft trains on it —
how far the draft had drifted from the actor on fresh samples) and, with several epochs,
`spec/draft_kl_last` (the same over the last pass).

Exact resume: distillation draws no global RNG (its shuffles use generators seeded by
(seed, step)), building the draft runs under `fork_rng`, and when refreshes are on the draft and its
AdamW state are saved in every checkpoint (companion `draft/`, no scheduler: constant LR), so a
resumed run drafts with the same weights as the uninterrupted one. Without refreshes the draft is
the truncated copy of the initial actor, which set-up rebuilds before the checkpoint is loaded.
With a *stochastic* draft (temperature > 0) the committed tokens depend on the draft's proposals,
so bit-reproducibility also needs a fixed γ (`rollout.gamma` > 0) and `speculative=draft`: the
adaptive choice follows wall-clock timings, which makes such a run lossless in distribution but
not bit-reproducible. With deterministic drafts (n-gram, or greedy sampling) every setting gives
exactly plain decoding's tokens.

Left out: distilling on several steps' rollouts (a replay buffer would have to be checkpointed),
a learning-rate schedule for the draft, sharing the actor's embeddings with the draft.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from fastrlhf.errors import UserError
from fastrlhf.model.decoder import CausalLM
from fastrlhf.rollout.sampler import SamplingParams
from fastrlhf.rollout.speculative.distill import distill_draft
from fastrlhf.rollout.speculative.draft_model import DraftModelDrafter, truncated_draft
from fastrlhf.rollout.speculative.ngram import NGramDrafter
from fastrlhf.rollout.speculative.strategy import AdaptiveSpeculator
from fastrlhf.rollout.speculative.verify import Speculator
from fastrlhf.train.optim import build_optimizer

USES_DRAFT_MODEL = ("draft", "adaptive")


def draft_layers(rollout, actor_layers: int) -> int:
    """`rollout.draft_layers`, 0 meaning half the actor's layers rounded up; must be < actor_layers."""
    k = rollout.draft_layers or -(-actor_layers // 2)
    if k >= actor_layers:
        raise UserError(f"rollout.draft_layers={k} must be smaller than the actor's {actor_layers} layers "
                        f"(rollout.speculative={rollout.speculative} needs a smaller draft model)")
    return k


def make_speculator(rollout, draft: DraftModelDrafter | None = None):
    """The engine's speculator for `rollout.speculative` (None = plain decoding); `draft` is the
    draft-model drafter for 'draft' and 'adaptive'."""
    kind, gamma = rollout.speculative, rollout.gamma
    if kind == "off":
        return None
    if kind in USES_DRAFT_MODEL and draft is None:
        raise ValueError(f"rollout.speculative={kind} needs a draft-model drafter")
    main = draft if kind == "draft" else NGramDrafter()
    others = {draft.name: draft} if kind == "adaptive" else {}
    if gamma > 0 and not others:
        return Speculator(main, gamma=gamma)
    fixed = {"gammas": (gamma,)} if gamma > 0 else {}  # adaptive with a fixed γ: only the drafter is chosen
    return AdaptiveSpeculator(main, others=others, **fixed)


@dataclass
class RolloutSpeculation:
    """The run's speculator plus, when a draft model is used, its refresh by distillation."""

    speculator: object = None
    actor: CausalLM | None = None
    draft: CausalLM | None = None
    drafter: DraftModelDrafter | None = None
    optimizer: torch.optim.Optimizer | None = None
    params: SamplingParams | None = None
    refresh_every: int = 0
    epochs: int = 1
    micro_batch: int = 64

    @classmethod
    def build(cls, rollout, actor: CausalLM, params: SamplingParams, micro_batch: int) -> "RolloutSpeculation":
        if rollout.speculative not in USES_DRAFT_MODEL:
            return cls(make_speculator(rollout))
        k = draft_layers(rollout, actor.config.num_layers)
        with torch.random.fork_rng(devices=[]):  # the draft's (overwritten) init must not move the global RNG
            draft = truncated_draft(actor, k)
        drafter = DraftModelDrafter(draft)
        optimizer = build_optimizer(draft, rollout.draft_lr) if rollout.draft_refresh_every else None
        return cls(make_speculator(rollout, drafter), actor, draft, drafter, optimizer, params,
                   rollout.draft_refresh_every, rollout.draft_epochs, micro_batch)

    def companions(self) -> dict:
        """What a checkpoint must hold for exact resume: the draft once it is trained."""
        return {"draft": (self.draft, self.optimizer, None)} if self.optimizer is not None else {}

    def after_step(self, step: int, batch, seed: int) -> dict[str, float]:
        """Refresh the draft after step `step` (0-based) when it is due and `batch` holds the actor's
        rollouts (behaviour `logprobs` from actor.generate; offline DPO's pairs are not samples).
        `seed`: the step's seed (shuffles only; no global RNG is drawn)."""
        due = self.optimizer is not None and (step + 1) % self.refresh_every == 0
        if not due or "logprobs" not in batch:
            return {}
        started = time.perf_counter()
        kl_first, kl_last = self.distill(batch["sequences"], batch["attention_mask"], batch["response_mask"],
                                         seed=seed)
        self.drafter.reset()
        stats = {"spec/draft_kl": kl_first, "time/draft_refresh": time.perf_counter() - started}
        if self.epochs > 1:
            stats["spec/draft_kl_last"] = kl_last
        return stats

    def distill(self, sequences, attention_mask, response_mask, seed: int) -> tuple[float, float]:
        """`epochs` shuffled passes in micro-batches → (mean pre-update KL of the first pass, mean of the last)."""
        device = next(self.draft.parameters()).device
        sequences, attention_mask, response_mask = (x.to(device) for x in (sequences, attention_mask, response_mask))
        generator = torch.Generator().manual_seed(seed)
        passes = []
        for _ in range(self.epochs):
            kls = []
            for rows in torch.randperm(len(sequences), generator=generator).split(self.micro_batch):
                stats = distill_draft(self.draft, self.actor, sequences[rows], attention_mask[rows], response_mask[rows],
                                      self.params, epochs=1, micro_batch=len(rows), optimizer=self.optimizer,
                                      seed=seed)  # one micro-batch per call: its shuffle is moot
                kls.append(stats["distill/kl_first"])
            passes.append(sum(kls) / len(kls))
        return passes[0], passes[-1]
