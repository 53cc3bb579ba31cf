"""Training-side log-probs of sampled tokens: the same `sampling_logprobs` the rollout engine used.

`sequence_logprobs(model, sequences, attention_mask, params)` runs the training forward on right-
padded prompt+response rows and returns, at position t, log π(sequences[:, t] | sequences[:, :t])
under the sampling distribution of `params` (temperature, top-k, top-p) — aligned with the token,
0 at t = 0 and wherever `mask` is 0 (pass the response mask: prompt tokens were not sampled and may
lie outside a top-p / top-k set, where their log-prob is −inf). With fp32 on CPU it equals the engine's per-token log-probs to ≤ 1e-5.
"""

from __future__ import annotations

import torch

from fastrlhf.model.decoder import CausalLM
from fastrlhf.rollout.sampler import SamplingParams, token_logprobs


def sequence_logprobs(model: CausalLM, sequences: torch.Tensor, attention_mask: torch.Tensor, mask: torch.Tensor,
                      params: SamplingParams, return_logits: bool = False):
    """sequences, attention_mask, mask [N, T] → log-probs [N, T] (and the shifted logits [N, T-1, V])."""
    logits = model(sequences, attention_mask)[:, :-1]  # [N, T-1, V] predicts tokens 1..T-1
    logp = token_logprobs(logits, sequences[:, 1:], params)  # [N, T-1]
    logp = torch.cat([torch.zeros_like(logp[:, :1]), logp], dim=1)  # [N, T]
    logp = torch.where(mask.bool(), logp, torch.zeros_like(logp))
    return (logp, logits) if return_logits else logp
