"""Acceptance rules of speculative sampling: which drafted tokens a verification pass commits.

Both rules take the actor's verification logits at the 1 + G fed positions of every row (position t
predicts the token after draft t; row b has g_b ≤ G real drafts) and return, per row, the tokens
y_0 .. y_G, their log-probs under the actor's sampling distribution p and the committed count
n = a + 1 (a = accepted drafts). Randomness is counter-based (sampler.uniforms): the uniform for
the token at output index k of sequence s is a hash of (seed_s, k, stream), one stream per use:

    stream 0  the plain sampler's draw (also the bonus token, and every deterministic-draft draw)
    stream 1  the draft model's own draws (draft_model.py)
    stream 2  acceptance tests                  stream 3  residual draws

1. `accept_by_comparison` — a deterministic draft (a point mass: n-gram lookup, greedy drafts).
   Draw y_t ~ p_t with the plain sampler's uniform and accept while y_t = d_{t+1}. Then the
   committed tokens *are* plain decoding's tokens, token for token (PAPERS.md §1).
2. `accept_by_rejection` — a stochastic draft d_t ~ q_t (Leviathan et al. 2023, Alg. 1; Chen et
   al. 2023, Alg. 2): accept d_t with probability min(1, p_t(d_t) / q_t(d_t)) (test: u·q < p); at
   the first rejection draw y_t ~ normalise(max(0, p_t − q_t)) and stop; if all g_b drafts pass,
   draw a bonus y_{g_b} ~ p_{g_b}. Every committed token is then distributed exactly as under p
   (the residual makes up, token by token, the mass that rejection removed). p and q are both the
   *sampling* distributions (same temperature / top-k / top-p, sampler.sampling_logprobs).

Log-probs are always log p_t(y_t) from the verification logits — never q, never the residual.
Each uniform influences the committed outcome at most once: a later pass starts after the last
committed index, and the draws it re-uses were discarded unused (drafts past a rejection).

Left out: token trees (several candidates per position), typical acceptance (lossy).
"""

from __future__ import annotations

import torch

from fastrlhf.rollout.sampler import SamplingParams, sample, sampling_logprobs, uniforms

DRAFT_STREAM, ACCEPT_STREAM, RESIDUAL_STREAM = 1, 2, 3


def accept_by_comparison(logits, drafts, draft_len, params: SamplingParams, seeds, counters):
    """logits [B, T, V]; drafts [B, T-1]; draft_len, seeds, counters [B] (counter = index of the
    first new token) → (y [B, T], log p(y) [B, T], n_commit [B])."""
    B, T, V = logits.shape
    k = counters[:, None] + torch.arange(T, device=logits.device)  # [B, T] output index per position
    u = uniforms(seeds[:, None].expand(-1, T).reshape(-1), k.reshape(-1))
    y, logp = sample(logits.reshape(-1, V), params, u)
    y, logp = y.view(B, T), logp.view(B, T)
    real = torch.arange(T - 1, device=logits.device) < draft_len[:, None]  # [B, T-1]
    match = (y[:, :-1] == drafts) & real
    return y, logp, match.long().cumprod(dim=1).sum(dim=1) + 1


def accept_by_rejection(logits, drafts, draft_len, q, params: SamplingParams, seeds, counters):
    """As `accept_by_comparison`, with q [B, T-1, V] the draft's sampling probabilities at each
    draft position (rows past draft_len ignored). Needs params.temperature > 0 and T ≥ 2."""
    B, T, V = logits.shape
    G, dev = T - 1, logits.device
    rows = torch.arange(B, device=dev)
    logp_all = sampling_logprobs(logits, params)  # [B, T, V]
    p = logp_all.double().exp()
    q = q.double()
    k = counters[:, None] + torch.arange(G, device=dev)  # [B, G]
    u_accept = uniforms(seeds[:, None].expand(-1, G).reshape(-1), k.reshape(-1), ACCEPT_STREAM).view(B, G)
    p_d = p[:, :G].gather(-1, drafts[..., None]).squeeze(-1)  # [B, G]
    q_d = q.gather(-1, drafts[..., None]).squeeze(-1)
    real = torch.arange(G, device=dev) < draft_len[:, None]
    accepted = (u_accept * q_d < p_d) & real  # u < p/q without dividing by q
    a = accepted.long().cumprod(dim=1).sum(dim=1)  # [B] accepted drafts
    # the last committed token: a bonus from p_a (all accepted) or a residual draw at the rejection
    bonus, _ = sample(logits[rows, a], params, uniforms(seeds, counters + a))
    at = a.clamp(max=G - 1)  # rows that accepted everything read a real row here but use `bonus`
    residual = (p[rows, at] - q[rows, at]).clamp_(min=0.0)  # [B, V] max(0, p − q), unnormalised
    resampled = inverse_cdf(residual, uniforms(seeds, counters + a, RESIDUAL_STREAM))
    rejected = a < draft_len
    empty = residual.sum(-1) <= 1e-12  # p ≤ q everywhere (rounding only): the rejection had probability ~0
    last = torch.where(rejected & ~empty, resampled, bonus)
    y = torch.zeros(B, T, dtype=torch.long, device=dev)
    y[:, :G] = drafts
    y[rows, a] = last
    return y, logp_all.gather(-1, y[..., None]).squeeze(-1), a + 1


def inverse_cdf(probs: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """One token per row from unnormalised non-negative weights probs [B, V] (float64) and u [B]:
    the first token whose cumulative weight exceeds u·total. Never returns a zero-weight token."""
    cdf = torch.cumsum(probs, dim=-1)
    tokens = torch.searchsorted(cdf, (u.to(cdf.device) * cdf[:, -1]).unsqueeze(-1), right=True).squeeze(-1)
    tokens = tokens.clamp_(max=probs.shape[-1] - 1)
    return torch.where(probs.gather(-1, tokens[:, None]).squeeze(-1) > 0, tokens, probs.argmax(-1))
