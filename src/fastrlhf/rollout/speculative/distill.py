"""Distil a draft model to the actor on the actor's own rollouts (forward KL, on-policy data).

On every response position t of the rollouts (logits at t − 1 predict token t):

    L = Σ_t m_t · KL(p_t ‖ q_t) / Σ_t m_t,   KL(p ‖ q) = Σ_x p(x) (log p(x) − log q(x))

p_t: the actor's *sampling* distribution (sampler.sampling_logprobs: temperature, top-k, top-p —
what the verifier compares against); q_t: the draft's softmax(z / T), tempered but *unfiltered*, so
log q is finite wherever p > 0 (a filtered q would put −inf on tokens the actor may sample). At
draft time the same filters are applied to q as to p. Forward KL (mass-covering) on the actor's own
samples is the choice of DistillSpec (Zhou et al. 2023) for sampling at T > 0: acceptance is
Σ_x min(p, q) = 1 − TV(p, q), and forward KL bounds TV by Pinsker.

Refresh (to be wired by the trainer): every K training steps call `distill_draft(draft, actor,
...)` on the latest rollout batch (its `sequences`, `attention_mask`, `response_mask`), keeping one
optimizer across refreshes, then `DraftModelDrafter.reset()`; a stale draft lowers acceptance,
never correctness. A fresh `truncated_draft(actor, k)` is the zero-training alternative.

Left out: reverse / JS divergences, distilling on draft-generated samples, LR schedules.
"""

from __future__ import annotations

import torch

from fastrlhf.model.decoder import CausalLM
from fastrlhf.rollout.sampler import SamplingParams, sampling_logprobs
from fastrlhf.updates import optimizer_step


def pack_rollouts(seqs, pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Finished `Sequence`s → right-padded (sequences, attention_mask, response_mask), all [N, T]."""
    rows = [s.prompt_ids + s.token_ids for s in seqs]
    T = max(len(r) for r in rows)
    sequences = torch.full((len(rows), T), pad_id, dtype=torch.long)
    attention_mask = torch.zeros(len(rows), T, dtype=torch.long)
    response_mask = torch.zeros(len(rows), T, dtype=torch.long)
    for i, (s, r) in enumerate(zip(seqs, rows)):
        sequences[i, : len(r)] = torch.tensor(r)
        attention_mask[i, : len(r)] = 1
        response_mask[i, s.prompt_len : len(r)] = 1
    return sequences, attention_mask, response_mask


def distillation_loss(draft_logits, target_logp, mask, temperature: float) -> torch.Tensor:
    """Masked mean forward KL. draft_logits, target_logp [N, T, V] (target −inf where filtered),
    mask [N, T] → scalar."""
    log_q = torch.log_softmax(draft_logits.float() / temperature, dim=-1)
    p = target_logp.exp()
    kl = (p * (torch.nan_to_num(target_logp, neginf=0.0) - log_q)).sum(-1)  # [N, T]; p = 0 terms vanish
    m = mask.float()
    return (kl * m).sum() / m.sum().clamp(min=1.0)


def distill_draft(draft: CausalLM, actor: CausalLM, sequences, attention_mask, response_mask, params: SamplingParams,
                  epochs: int = 1, micro_batch: int = 64, lr: float = 1e-3, optimizer=None, seed: int = 0) -> dict:
    """Train `draft` in place towards the actor's sampling distribution on response tokens.

    sequences, attention_mask, response_mask [N, T] (right-padded rollouts). Returns
    {"distill/kl_first", "distill/kl_last"}: mean KL of the first and last micro-batch step."""
    temperature = params.temperature or 1.0
    target_params = params if not params.greedy else SamplingParams(temperature=1.0)
    actor.eval()
    with torch.no_grad():
        target = sampling_logprobs(actor(sequences, attention_mask)[:, :-1], target_params)  # [N, T-1, V]
    mask = response_mask[:, 1:]  # logits at t − 1 predict token t
    optimizer = optimizer or torch.optim.AdamW(draft.parameters(), lr=lr, weight_decay=0.0)
    generator = torch.Generator().manual_seed(seed)
    losses = []
    draft.train()
    for _ in range(epochs):
        for rows in torch.randperm(sequences.shape[0], generator=generator).split(micro_batch):
            logits = draft(sequences[rows], attention_mask[rows])[:, :-1]
            loss = distillation_loss(logits, target[rows], mask[rows], temperature)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer_step(draft, optimizer, None, loss=loss.detach())  # non-finite: raises, nothing applied
            losses.append(float(loss.detach()))
    draft.eval()
    return {"distill/kl_first": losses[0], "distill/kl_last": losses[-1]}
