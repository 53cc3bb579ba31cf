"""Batched speculative decoding: draft, verify all drafts in one actor pass, commit, roll back.

Per running sequence b with draft d_1..d_g (g ≤ γ, from the drafter; g may differ per sequence):
1. feed [last token, d_1 .. d_g] at positions L_b .. L_b+g in ONE forward pass for the whole batch
   (rows padded to 1 + max g; an explicit causal mask; the KV of all fed tokens is written);
2. decide which drafts to keep (acceptance.py): sample-and-compare for a deterministic draft,
   min(1, p/q) + residual resampling (Leviathan et al. 2023 / Chen et al. 2023) for a stochastic
   one; commit y_0 .. y_a (a = accepted drafts, so ≥ 1 token per pass), with log-probs log p(y_t)
   from the verification logits — never the drafter's;
3. KV rollback: the sequence's length advances by the committed count only; KV written for rejected
   positions lies beyond it, is masked by position and overwritten later.

Drafters come in two kinds, told apart by the method they have:
- per sequence, deterministic: `propose(group, context, γ) -> list[int]` (+ `extend(group, doc,
  tokens)` to learn the text of every sequence; ngram.py);
- batched, possibly stochastic: `draft_batch(engine, slots, seqs, contexts, gammas) -> Draft`
  (draft_model.py), returning the draft's sampling probabilities q when it sampled its drafts.
Both have `reset()`, called when a generate call starts.

With a deterministic drafter and counter-based randomness the committed tokens are *the same
tokens* plain decoding samples: speculation changes speed, never samples (tested token for token).
With a stochastic drafter they follow the same distribution (tested by χ² over whole sequences).

The speculator reaches the engine only through its speculation interface (engine.py:
`running_sequences`, `generated_tokens`, `next_tokens`, `sampling_state`, `verify_forward`, `append`,
…); it never touches the engine's cache or per-slot state.

Left out: token trees, compile of the verify pass.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from fastrlhf.rollout.speculative.acceptance import accept_by_comparison, accept_by_rejection


@dataclass
class SpecStats:
    passes: int = 0  # sequence-verifications (one per running sequence per verification forward)
    drafted: int = 0  # draft tokens judged (proposed, minus those past a stop on an accepted draft)
    accepted: int = 0  # draft tokens accepted and committed (not those past a stop)
    rejected: int = 0  # sequence-verifications that ended on a rejected draft (at most one each)
    committed: int = 0  # tokens committed (accepted + one sampled per pass, fewer at a stop)

    @property
    def acceptance(self) -> float:
        return self.accepted / self.drafted if self.drafted else 0.0

    @property
    def per_draft_acceptance(self) -> float:
        """α of E(α, γ) (strategy.py): the chance that a draft is accepted *given* that the ones before
        it were. Each judged draft is a trial — accepted ones succeed, the first rejected one fails,
        the drafts after it are never judged — so α = accepted / (accepted + rejected). (accepted /
        drafted counts the unjudged drafts as failures and underestimates α for γ > 1.)"""
        trials = self.accepted + self.rejected
        return self.accepted / trials if trials else 0.0

    @property
    def tokens_per_pass(self) -> float:
        return self.committed / self.passes if self.passes else 0.0


@dataclass
class Draft:
    """Drafts of one pass: tokens [B, G] (padded with 0 past `lengths` [B]), and q [B, G, V] — the
    draft's sampling probabilities at each position — or None for deterministic drafts."""

    tokens: torch.Tensor
    lengths: torch.Tensor
    q: torch.Tensor | None = None

    @classmethod
    def from_lists(cls, drafts: list[list[int]], device) -> "Draft":
        G = max((len(d) for d in drafts), default=0)
        tokens = torch.zeros(len(drafts), G, dtype=torch.long, device=device)
        for i, d in enumerate(drafts):
            tokens[i, : len(d)] = torch.tensor(d, dtype=torch.long)
        return cls(tokens, torch.tensor([len(d) for d in drafts], dtype=torch.long, device=device))


@dataclass
class Speculator:
    """Fixed-γ speculation with one drafter (see the module docstring for the two drafter kinds);
    groups are the prompts of the current generate call."""

    drafter: object
    gamma: int = 4
    stats: SpecStats = field(default_factory=SpecStats)
    _indexed: dict[tuple[int, int], int] = field(default_factory=dict)  # (drafter id, seq_id) → tokens given to it
    _call: int = 0  # generate calls so far: documents are (call, seq_id), groups the prompt's tokens
    _remembered: int = 0  # responses given by `remember` so far (their document keys)

    def begin(self) -> None:
        """A new generate call: sequence ids restart, so documents get this call's number."""
        self.drafter.reset()
        self._indexed.clear()
        self._call += 1

    def decode(self, engine, active: list[int]) -> None:
        self.verify_with(self.drafter, self.gamma, engine, active)

    def drafters_with_memory(self) -> list:
        """The drafters that learn text (`extend`): those earlier responses can help."""
        return [self.drafter] if hasattr(self.drafter, "extend") else []

    def remember(self, responses) -> None:
        """Give the text-learning drafters earlier responses, (prompt ids, response ids) pairs — e.g.
        the previous epoch's rollouts of the prompts about to be generated. A training run does not
        need this: the responses of its own earlier generate calls are kept automatically."""
        for drafter in self.drafters_with_memory():
            for i, (prompt, response) in enumerate(responses):
                drafter.extend(tuple(prompt), ("remembered", self._remembered + i), list(prompt) + list(response))
        self._remembered += len(responses)

    def verify_with(self, drafter, gamma: int, engine, active: list[int]) -> None:
        """One draft + verification pass with `drafter` at draft length `gamma` for the running slots."""
        seqs = engine.running_sequences(active)
        slots = torch.tensor(active, device=engine.device)
        draft = self._drafts(drafter, gamma, engine, slots, seqs)
        fed = torch.cat([engine.next_tokens(slots)[:, None], draft.tokens], dim=1)  # [B, T]
        logits = self._verify(engine, slots, fed, contiguous=active[-1] == len(active) - 1)  # [B, T, V]
        seeds, counters = engine.sampling_state(slots)
        if draft.q is None or draft.tokens.shape[1] == 0:
            y, logp, n_commit = accept_by_comparison(logits, draft.tokens, draft.lengths, engine.params, seeds, counters)
        else:
            y, logp, n_commit = accept_by_rejection(logits, draft.tokens, draft.lengths, draft.q, engine.params, seeds, counters)
        self._commit(engine, slots, seqs, y, logp, n_commit, draft.lengths)

    def _drafts(self, drafter, gamma: int, engine, slots, seqs) -> Draft:
        contexts = [self._context(engine, s) for s in seqs]
        _, generated = engine.sampling_state(slots)
        rooms = (engine.params.max_new_tokens - generated - 1).clamp(min=0)  # tokens left after y_0
        gammas = rooms.clamp(max=gamma).tolist()
        if hasattr(drafter, "draft_batch"):
            return drafter.draft_batch(engine, slots, seqs, contexts, gammas)
        return Draft.from_lists([self._propose(drafter, s, c, g) for s, c, g in zip(seqs, contexts, gammas)], engine.device)

    def _context(self, engine, seq) -> list[int]:
        """The running sequence's tokens so far: prompt + generated."""
        return seq.prompt_ids + engine.generated_tokens(seq.slot)

    def _propose(self, drafter, seq, context: list[int], gamma: int) -> list[int]:
        key = (id(drafter), seq.seq_id)
        known = self._indexed.get(key, 0)
        if known < len(context) and hasattr(drafter, "extend"):  # the drafter learns this text (it helps siblings too)
            drafter.extend(tuple(seq.prompt_ids), (self._call, seq.seq_id), context[known:])
            self._indexed[key] = len(context)
        return drafter.propose(tuple(seq.prompt_ids), context, gamma) if gamma > 0 else []

    def _verify(self, engine, slots, fed, contiguous: bool) -> torch.Tensor:
        """The actor's verification forward of `fed` [B, T] → logits [B, T, V] (KV rollback: the
        K/V of every fed token is written beyond the live lengths; only `append` makes it live).
        A row with a shorter draft is padded; the engine clamps padding past the cache into the
        row's own slot."""
        return engine.verify_forward(slots, fed, contiguous)

    def _commit(self, engine, slots, seqs, y, logp, n_commit, draft_len) -> None:
        self.stats.passes += len(seqs)
        committed = torch.zeros(len(seqs), dtype=torch.long, device=engine.device)  # per row
        alive = torch.ones(len(seqs), dtype=torch.bool, device=engine.device)
        for t in range(int(n_commit.max())):
            rows = alive & (t < n_commit)
            if not bool(rows.any()):
                break
            done = engine.append(slots[rows], y[rows, t], logp[rows, t])  # the fed token becomes live, y_t is recorded
            committed[rows] += 1
            alive[rows.nonzero().squeeze(1)[done]] = False
        # accepted = drafts that became part of a sequence. A row that stopped on an accepted draft
        # (its EOS) never had its later drafts judged: they are moot, neither accepted nor drafted,
        # so acceptance measures how often the drafter is right, not where sequences end
        stopped_early = committed < n_commit
        self.stats.rejected += int((~stopped_early & (committed - 1 < draft_len)).sum())
        self.stats.committed += int(committed.sum())
        self.stats.accepted += int(committed.sum()) - len(seqs)
        self.stats.drafted += int(torch.where(stopped_early, committed - 1, draft_len).sum())
