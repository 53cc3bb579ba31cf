"""Batched speculative decoding with a deterministic drafter: one verification pass, exact sampling.

Per running sequence b with draft d_1..d_g (g ≤ γ, from the drafter; g may differ per sequence):
1. feed [last token, d_1 .. d_g] at positions L_b .. L_b+g in ONE forward pass for the whole batch
   (rows padded to 1 + max g; an explicit causal mask; the KV of all fed tokens is written);
2. at every fed position t draw y_t from the actor's sampling distribution with the uniform the
   plain decoder would use for that token (counter n_generated + t, see sampler.uniforms);
3. accept drafts while y_t = d_{t+1}; commit y_0 .. y_a (a = accepted drafts, so ≥ 1 token per pass);
   their log-probs are the verification logits' log π(y_t) — never the drafter's;
4. KV rollback: the sequence's length advances by the committed count only; KV written for rejected
   positions lies beyond it, is masked by position and overwritten later.

Lossless by construction — and more: with a deterministic drafter the committed tokens are *the
same tokens* plain decoding would sample (same distribution, same uniform at each position), so
speculation changes speed, never samples (tested token for token). PAPERS.md §1's "sample y ~ p,
accept while equal" rule is this with counter-based randomness.

Left out (issue 5 continues): stochastic draft models (min(1, p/q) + residual resampling), token
trees, the cost-model strategy that picks γ per step (γ is fixed here), compile of the verify pass.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from fastrlhf.rollout.kv_cache import DecodeView
from fastrlhf.rollout.sampler import sample, uniforms


@dataclass
class SpecStats:
    passes: int = 0  # sequence-verifications (one per running sequence per verification forward)
    drafted: int = 0  # draft tokens proposed
    accepted: int = 0  # draft tokens accepted
    committed: int = 0  # tokens committed (accepted + one sampled per pass, fewer at a stop)

    @property
    def acceptance(self) -> float:
        return self.accepted / self.drafted if self.drafted else 0.0

    @property
    def tokens_per_pass(self) -> float:
        return self.committed / self.passes if self.passes else 0.0


@dataclass
class Speculator:
    """Fixed-γ speculation with a drafter exposing `reset()`, `extend(group, doc, tokens)` and
    `propose(group, context, γ)`; groups are the prompts of the current generate call."""

    drafter: object
    gamma: int = 4
    stats: SpecStats = field(default_factory=SpecStats)
    _indexed: dict[int, int] = field(default_factory=dict)  # seq_id → tokens already given to the drafter

    def begin(self) -> None:
        """A new generate call: sequence ids and prompt indices restart, so the drafter does too."""
        self.drafter.reset()
        self._indexed.clear()

    def decode(self, engine, active: list[int]) -> None:
        seqs = [engine.scheduler.running[s] for s in active]
        contexts = [self._context(engine, s) for s in seqs]
        drafts = [self._draft(engine, s, c) for s, c in zip(seqs, contexts)]
        slots = torch.tensor(active, device=engine.device)
        T = 1 + max(len(d) for d in drafts)
        fed = torch.zeros(len(active), T, dtype=torch.long, device=engine.device)
        fed[:, 0] = engine.last_token[slots]
        for i, d in enumerate(drafts):
            fed[i, 1 : 1 + len(d)] = torch.tensor(d, dtype=torch.long)
        logits = self._verify(engine, slots, fed, contiguous=active[-1] == len(active) - 1)  # [B, T, V]
        counters = engine.n_generated[slots][:, None] + torch.arange(T, device=engine.device)  # [B, T]
        seeds = engine.seeds[slots][:, None].expand(-1, T)
        y, logp = sample(logits.reshape(-1, logits.shape[-1]), engine.params, uniforms(seeds.reshape(-1), counters.reshape(-1)))
        y, logp = y.view(-1, T), logp.view(-1, T)
        draft_len = torch.tensor([len(d) for d in drafts], device=engine.device)
        match = (y[:, :-1] == fed[:, 1:]) & (torch.arange(T - 1, device=engine.device) < draft_len[:, None])
        n_commit = match.long().cumprod(dim=1).sum(dim=1) + 1  # [B]
        self._commit(engine, slots, seqs, y, logp, n_commit, draft_len)

    def _context(self, engine, seq) -> list[int]:
        n = int(engine.n_generated[seq.slot])
        return seq.prompt_ids + engine.out_tokens[seq.slot, :n].tolist()

    def _draft(self, engine, seq, context: list[int]) -> list[int]:
        known = self._indexed.get(seq.seq_id, 0)
        if known < len(context):  # the drafter learns this sequence's text (it helps its siblings too)
            self.drafter.extend(seq.prompt_index, seq.seq_id, context[known:])
            self._indexed[seq.seq_id] = len(context)
        room = engine.params.max_new_tokens - int(engine.n_generated[seq.slot]) - 1
        return self.drafter.propose(seq.prompt_index, context, min(self.gamma, room)) if room > 0 else []

    def _verify(self, engine, slots, fed, contiguous: bool) -> torch.Tensor:
        model = engine.model
        positions = engine.lengths[slots][:, None] + torch.arange(fed.shape[1], device=engine.device)  # [B, T]
        # a row with a shorter draft is padded; its padding may point past the cache: clamp it into the
        # row's own slot (positions beyond a sequence's length are rewritten before they are ever read)
        positions = positions.clamp(max=engine.cache.max_len - 1)
        span = int(positions.max()) + 1
        key_positions = torch.arange(span, device=engine.device).expand(fed.shape[0], span)
        masks = model.masks_for(positions, key_positions, torch.ones_like(key_positions, dtype=torch.bool))
        hidden = model.hidden_states(fed, positions, masks, DecodeView(engine.cache, slots, positions, span, contiguous))
        return model.logits(hidden)

    def _commit(self, engine, slots, seqs, y, logp, n_commit, draft_len) -> None:
        self.stats.passes += len(seqs)
        self.stats.drafted += int(draft_len.sum())
        self.stats.accepted += int((n_commit - 1).sum())
        alive = torch.ones(len(seqs), dtype=torch.bool, device=engine.device)
        for t in range(int(n_commit.max())):
            rows = alive & (t < n_commit)
            if not bool(rows.any()):
                break
            engine.lengths[slots[rows]] += 1  # the token fed at this position is now part of the sequence
            done = engine._commit(slots[rows], y[rows, t], logp[rows, t])
            self.stats.committed += int(rows.sum())
            alive[rows.nonzero().squeeze(1)[done]] = False
