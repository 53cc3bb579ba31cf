"""Fused, chunked LM head + log-prob: log π(x) of given tokens without the full [R, V] logits.

For the hidden state h of a position that predicts token x, with LM head W [V, d] and logits
z = W h, the op returns, row by row,

    log π(x)   with π = `sampling_logprobs(z, params)`.exp()   (the sampling distribution: T, top-k,
                top-p; greedy T = 0 is the plain softmax, T taken as 1)
    H = −Σ_j π_j log π_j                                        (0 · log 0 = 0 on filtered tokens)

and the gradient of log π(x), the top-k / top-p cut-offs being piecewise constant in z:

    ∂ log π(x) / ∂z_j = (1[j = x] − π_j) / T   for kept j,   0 for filtered j,
    ∂/∂h = Wᵀ ∂/∂z,   ∂/∂W = (∂/∂z) hᵀ.

Rows are processed `chunk_rows` at a time, so at most one chunk of logits [C, V] (and the few
[C, V] temporaries of the softmax) exists at once; backward recomputes each chunk's logits instead
of saving them (only hidden, weight and tokens are kept). The matmuls run in `compute_dtype`, all
softmax math in fp32, and the weight gradient accumulates in fp32 (fp64 for fp64 weights) across
chunks. Autocast is switched off inside: `compute_dtype` alone sets the matmul precision.

A row whose upstream gradient is 0, or whose token lies outside the top-k / top-p set (log π = −inf),
gets exactly 0 gradient (never NaN). Entropy is returned detached.

Left out: a hand-written kernel (this is plain PyTorch, one chunk at a time), a bias on the LM head,
logit soft-capping, a gradient for the entropy, and double backward.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from fastrlhf.rollout.sampler import SamplingParams, sampling_logprobs

CHUNK_ELEMENTS = 1 << 23  # ~8M logits per chunk: 32 MiB per fp32 [C, V] buffer


def default_chunk_rows(vocab_size: int) -> int:
    """Rows per chunk so that chunk_rows × V ≤ CHUNK_ELEMENTS (at least 1)."""
    return max(1, CHUNK_ELEMENTS // max(1, vocab_size))


def token_logprobs_from_hidden(hidden: Tensor, weight: Tensor, tokens: Tensor, params: SamplingParams,
                               compute_dtype: torch.dtype | None = None,
                               chunk_rows: int | None = None) -> tuple[Tensor, Tensor]:
    """hidden [R, d] (positions that predict `tokens`), weight [V, d], tokens [R] →
    (log π(tokens) [R] fp32, differentiable w.r.t. hidden and weight; entropy [R] fp32, detached).

    Equals `token_logprobs(F.linear(hidden, weight), tokens, params)` without building [R, V].
    `compute_dtype`: matmul dtype (None → hidden's dtype). `chunk_rows`: None → `default_chunk_rows(V)`."""
    if hidden.dim() != 2 or weight.dim() != 2 or hidden.shape[1] != weight.shape[1]:
        raise ValueError(f"need hidden [R, d] and weight [V, d], got {tuple(hidden.shape)} and {tuple(weight.shape)}")
    if tokens.shape != hidden.shape[:1]:
        raise ValueError(f"need tokens [R] = [{hidden.shape[0]}], got {tuple(tokens.shape)}")
    if chunk_rows is None:
        chunk_rows = default_chunk_rows(weight.shape[0])
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be ≥ 1, got {chunk_rows}")
    return _LMHeadLogprobs.apply(hidden, weight, tokens, params, compute_dtype or hidden.dtype, int(chunk_rows))


class _LMHeadLogprobs(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, tokens, params, compute_dtype, chunk_rows):
        tokens = tokens.to(device=hidden.device, dtype=torch.long)
        ctx.save_for_backward(hidden, weight, tokens)
        ctx.params, ctx.compute_dtype, ctx.chunk_rows = params, compute_dtype, chunk_rows
        R = hidden.shape[0]
        logp = torch.empty(R, dtype=torch.float32, device=hidden.device)
        entropy = torch.empty(R, dtype=torch.float32, device=hidden.device)
        with torch.autocast(hidden.device.type, enabled=False):
            w = weight.to(compute_dtype)
            for lo in range(0, R, chunk_rows):
                hi = min(lo + chunk_rows, R)
                lp = sampling_logprobs(hidden[lo:hi].to(compute_dtype) @ w.T, params)  # [C, V] fp32
                logp[lo:hi] = lp.gather(-1, tokens[lo:hi, None]).squeeze(-1)
                entropy[lo:hi] = -(lp.exp() * lp.masked_fill(torch.isinf(lp), 0.0)).sum(-1)
                del lp
        ctx.mark_non_differentiable(entropy)
        return logp, entropy

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_logp, _grad_entropy):
        hidden, weight, tokens = ctx.saved_tensors
        params, cd, chunk_rows = ctx.params, ctx.compute_dtype, ctx.chunk_rows
        want_h, want_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        if not (want_h or want_w):
            return None, None, None, None, None, None
        inv_t = 1.0 if params.greedy else 1.0 / params.temperature
        R = hidden.shape[0]
        grad_h = torch.zeros_like(hidden) if want_h else None
        acc = torch.promote_types(weight.dtype, torch.float32)  # fp32 (fp64 for fp64 weights)
        grad_w = torch.zeros(weight.shape, dtype=acc, device=weight.device) if want_w else None
        with torch.autocast(hidden.device.type, enabled=False):
            w = weight.to(cd)
            for lo in range(0, R, chunk_rows):
                hi = min(lo + chunk_rows, R)
                h = hidden[lo:hi].to(cd)
                x = tokens[lo:hi, None]
                lp = sampling_logprobs(h @ w.T, params)  # [C, V] fp32, recomputed
                g = grad_logp[lo:hi].float()
                g = torch.where(torch.isinf(lp.gather(-1, x).squeeze(-1)), torch.zeros_like(g), g) * inv_t  # [C]
                gz = lp.exp_().mul_(-g[:, None])  # −g π_j / T  (0 where filtered)
                gz.scatter_add_(-1, x, g[:, None])  # + g / T at the token
                gz = gz.to(cd)
                if want_h:
                    grad_h[lo:hi] = (gz @ w).to(hidden.dtype)
                if want_w:
                    if cd == acc:
                        grad_w.addmm_(gz.T, h)
                    else:
                        grad_w += (gz.T @ h).to(acc)
                del lp, gz
        return grad_h, (grad_w.to(weight.dtype) if want_w else None), None, None, None, None
