"""Training-side log-probs of sampled tokens: the same sampling distribution the rollout engine used.

Two paths compute the same numbers (tests hold them to 1e-6 in fp32):
- padded (`sequence_logprobs`, `train.micro_batch_tokens=0`): the training forward on right-padded
  prompt+response rows, full logits [N, T, V], `sampler.token_logprobs`;
- packed (`train/packing.py`, the default): rows packed without padding, the LM head only on the
  hidden states that predict response tokens, chunked, no [N, T, V] tensor.

Both return, at position t, log π(sequences[:, t] | sequences[:, :t]) under the sampling
distribution of `params` (temperature, top-k, top-p) — aligned with the token, 0 at t = 0 and
wherever `mask` is 0 (pass the response mask: prompt tokens were not sampled and may lie outside a
top-p / top-k set, where their log-prob is −inf). With fp32 on CPU they equal the engine's per-token
log-probs to ≤ 1e-5. `micro_logprobs` picks the path and runs it under the run's precision;
`score_batch` scores a whole batch without gradients (the reference model, the π_old pre-pass).
"""

from __future__ import annotations

import torch

from fastrlhf.dataflow.batch import Batch
from fastrlhf.model.decoder import CausalLM
from fastrlhf.model.precision import Precision
from fastrlhf.rollout.sampler import SamplingParams, sampling_logprobs, token_logprobs
from fastrlhf.train.packing import micro_batch_rows, pack_rows, packed_logprobs


def sequence_logprobs(model: CausalLM, sequences: torch.Tensor, attention_mask: torch.Tensor, mask: torch.Tensor,
                      params: SamplingParams, return_logits: bool = False):
    """sequences, attention_mask, mask [N, T] → log-probs [N, T] (and the shifted logits [N, T-1, V])."""
    logits = model(sequences, attention_mask)[:, :-1]  # [N, T-1, V] predicts tokens 1..T-1
    logp = token_logprobs(logits, sequences[:, 1:], params)  # [N, T-1]
    logp = torch.cat([torch.zeros_like(logp[:, :1]), logp], dim=1)  # [N, T]
    logp = torch.where(mask.bool(), logp, torch.zeros_like(logp))
    return (logp, logits) if return_logits else logp


def position_entropy(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """Entropy of the sampling distribution per position: logits [..., V] → [...] (0·log 0 = 0)."""
    logp = sampling_logprobs(logits, params)
    return -(logp.exp() * torch.where(torch.isinf(logp), torch.zeros_like(logp), logp)).sum(-1)


def micro_logprobs(model: CausalLM, micro: Batch, params: SamplingParams, packed: bool,
                   precision: Precision) -> tuple[torch.Tensor, torch.Tensor]:
    """(log-probs [n, T] of the response tokens, differentiable; their entropy [n, T], detached)."""
    mask = micro["response_mask"]
    with precision.autocast():
        if packed:
            rows = pack_rows(micro["sequences"], micro["attention_mask"], mask)
            return packed_logprobs(model, rows, params, compute_dtype=None if precision.exact else precision.dtype)
        logp, logits = sequence_logprobs(model, micro["sequences"], micro["attention_mask"], mask, params,
                                         return_logits=True)
        with torch.no_grad():
            entropy = torch.cat([torch.zeros_like(logp[:, :1]), position_entropy(logits, params)], dim=1)
        return logp, entropy * mask.to(entropy.dtype)


@torch.no_grad()
def score_batch(model: CausalLM, batch: Batch, params: SamplingParams, micro_batch_size: int,
                micro_batch_tokens: int, precision: Precision) -> torch.Tensor:
    """Log-probs [N, T] of every row's response tokens, in micro-batches, without gradients."""
    out = torch.zeros(batch["sequences"].shape, dtype=torch.float32, device=batch["sequences"].device)
    for rows in micro_batch_rows(batch["attention_mask"], micro_batch_size, micro_batch_tokens):
        rows = rows.to(out.device)
        out[rows] = micro_logprobs(model, batch.select(rows), params, micro_batch_tokens > 0, precision)[0]
    return out
