"""A small draft model as a stochastic drafter: our own decoder with fewer layers, its own KV cache.

`truncated_draft(actor, k)` copies the actor's embeddings, first k blocks, final norm and LM head
(a layer-truncated copy: zero training, tracks the actor whenever it is re-cut). `distill.py`
trains any draft to the actor's sampling distribution instead.

`DraftModelDrafter.draft_batch` drafts g_b tokens for every running sequence b:
1. catch-up: feed the context tokens whose KV the draft cache does not hold yet (the whole prompt
   for a new sequence; afterwards the tokens committed since the last pass, minus the drafts it
   had already fed and that were accepted) in ONE multi-token forward over the batch;
2. γ steps: q_j = the draft's sampling distribution (sampler.sampling_logprobs: the same
   temperature / top-k / top-p as the actor's p), d_j ~ q_j by inverse CDF with the counter-based
   uniform (seed, output index, stream 1), then feed d_j (not the last one) to get q_{j+1}.
It returns the drafts and the full q rows [B, G, V]; verify.py accepts d_j with probability
min(1, p(d_j)/q_j(d_j)) (acceptance.py). Greedy (T = 0) drafts the argmax and returns q = None:
a point mass, verified by comparison, so greedy speculative output equals greedy plain output.

KV rollback of the draft cache is by bookkeeping: per slot the list of tokens whose KV it holds;
the valid prefix is its longest common prefix with the new context (capped at len(context) − 1 so
the last context token is always fed: its logits give q_0). Everything past it is overwritten.

Left out: sharing a prompt's draft prefill between the n samples of a group (the actor does this),
keeping only q(d_j) instead of full rows (the residual max(0, p − q) needs the rows), compile.
"""

from __future__ import annotations

import dataclasses

import torch

from fastrlhf.model.decoder import CausalLM
from fastrlhf.rollout.kv_cache import DecodeView, KVCache
from fastrlhf.rollout.sampler import sample, sampling_logprobs, uniforms
from fastrlhf.rollout.speculative.acceptance import DRAFT_STREAM
from fastrlhf.rollout.speculative.verify import Draft


def truncated_draft(actor: CausalLM, num_layers: int) -> CausalLM:
    """A copy of `actor` keeping its first `num_layers` blocks + final norm + LM head (own tensors)."""
    cfg = actor.config
    if not 1 <= num_layers <= cfg.num_layers:
        raise ValueError(f"num_layers must be in [1, {cfg.num_layers}], got {num_layers}")
    small = dataclasses.replace(cfg, num_layers=num_layers, sliding_window=list(cfg.sliding_window[:num_layers]),
                                score_head=False)
    param = next(actor.parameters())
    draft = CausalLM(small).to(device=param.device, dtype=param.dtype)
    source = actor.state_dict()
    draft.load_state_dict({name: source[name] for name in draft.state_dict()})  # copies into the draft's own tensors
    return draft.eval()


class DraftModelDrafter:
    name = "draft"

    def __init__(self, model: CausalLM):
        self.model = model
        self.cache: KVCache | None = None
        self.owner: dict[int, int] = {}  # slot → seq_id whose KV the slot holds
        self.cached: dict[int, list[int]] = {}  # slot → tokens whose KV is stored at positions 0..len−1
        self.confirmed: dict[int, int] = {}  # slot → context length at the last pass (a known-valid prefix)

    def reset(self) -> None:
        self.owner.clear()
        self.cached.clear()
        self.confirmed.clear()

    @torch.no_grad()
    def draft_batch(self, engine, slots: torch.Tensor, seqs, contexts: list[list[int]], gammas: list[int]) -> Draft:
        B, G, dev = len(seqs), max(gammas, default=0), engine.device
        if G == 0:
            return Draft(torch.zeros(B, 0, dtype=torch.long, device=dev), torch.zeros(B, dtype=torch.long, device=dev))
        self._ensure_cache(engine)
        params, contiguous = engine.params, int(slots[-1]) == B - 1
        starts = [self._valid_prefix(int(slot), s.seq_id, c) for slot, s, c in zip(slots.tolist(), seqs, contexts)]
        logits = self._catch_up(slots, contexts, starts, contiguous)  # [B, V] predicts output index n_b
        seeds, counters = engine.sampling_state(slots)
        ctx_len = torch.tensor([len(c) for c in contexts], device=dev)
        tokens = torch.zeros(B, G, dtype=torch.long, device=dev)
        q = None if params.greedy else torch.zeros(B, G, logits.shape[-1], dtype=torch.float32, device=dev)
        for j in range(G):
            if params.greedy:
                tokens[:, j] = logits.argmax(-1)
            else:
                tokens[:, j], _ = sample(logits, params, uniforms(seeds, counters + j, DRAFT_STREAM))
                q[:, j] = sampling_logprobs(logits, params).exp()
            if j + 1 < G:
                logits = self._forward(tokens[:, j : j + 1], (ctx_len + j)[:, None], slots, contiguous)[:, 0]
        lengths = torch.tensor(gammas, dtype=torch.long, device=dev)
        tokens = tokens.masked_fill(torch.arange(G, device=dev) >= lengths[:, None], 0)
        for slot, c, d, g in zip(slots.tolist(), contexts, tokens.tolist(), gammas):
            self.cached[slot] = c + d[: max(g - 1, 0)]  # the last draft was sampled, never fed
            self.confirmed[slot] = len(c)
        return Draft(tokens, lengths, q)

    def _ensure_cache(self, engine) -> None:
        S, L = engine.cache_size()
        if self.cache is None or self.cache.num_slots != S or self.cache.max_len != L:
            param = next(self.model.parameters())
            self.cache = KVCache(self.model.config, S, L, param.dtype, param.device)
            self.model.model.rotary.ensure(L)  # a cache's owner sizes the RoPE tables (decoder.Rotary)
            self.reset()

    def _valid_prefix(self, slot: int, seq_id: int, context: list[int]) -> int:
        """How many leading context tokens the draft cache already holds for this slot."""
        if self.owner.get(slot) != seq_id:  # a new sequence in this slot: nothing is valid
            self.owner[slot], self.cached[slot], self.confirmed[slot] = seq_id, [], 0
        cached, k = self.cached[slot], self.confirmed[slot]
        limit = min(len(cached), len(context) - 1)
        while k < limit and cached[k] == context[k]:
            k += 1
        return min(k, limit)

    def _catch_up(self, slots, contexts, starts, contiguous: bool) -> torch.Tensor:
        """Feed context[start_b:] for every row (≥ 1 token) → logits at each row's last context token [B, V]."""
        dev = slots.device
        lengths = [len(c) - s for c, s in zip(contexts, starts)]
        T = max(lengths)
        fed = torch.zeros(len(contexts), T, dtype=torch.long, device=dev)
        for i, (c, s) in enumerate(zip(contexts, starts)):
            fed[i, : len(c) - s] = torch.tensor(c[s:], dtype=torch.long)
        positions = torch.tensor(starts, device=dev)[:, None] + torch.arange(T, device=dev)  # [B, T]
        logits = self._forward(fed, positions, slots, contiguous)  # [B, T, V]
        return logits[torch.arange(len(contexts), device=dev), torch.tensor(lengths, device=dev) - 1]

    def _forward(self, fed, positions, slots, contiguous: bool) -> torch.Tensor:
        """fed, positions [B, T] → logits [B, T, V]; writes the fed tokens' KV into the draft cache.
        Padding positions past the cache are clamped into the row's own slot (never read as valid)."""
        positions = positions.clamp(max=self.cache.max_len - 1)
        span = int(positions.max()) + 1
        keys = torch.arange(span, device=fed.device).expand(fed.shape[0], span)
        masks = self.model.masks_for(positions, keys, torch.ones_like(keys, dtype=torch.bool))
        view = DecodeView(self.cache, slots, positions, span, contiguous)
        return self.model.logits(self.model.hidden_states(fed, positions, masks, view))
