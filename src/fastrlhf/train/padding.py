"""Right padding of token rows into the [N, T] tensors the model and the losses take.

One helper for every trainer (RL workers, SFT, reward model, evaluation): row i is prompt_i +
response_i, left-aligned, padded with `pad_id` to the longest row. `attention_mask` marks real
tokens and `response_mask` the response tokens (the ones a policy or SFT loss is taken on).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def pack_sequences(prompts: Sequence[Sequence[int]], responses: Sequence[Sequence[int]], pad_id: int):
    """Right-padded [prompt + response] rows → sequences, attention_mask, response_mask [N, T] (int64, CPU)."""
    T = max(len(p) + len(r) for p, r in zip(prompts, responses))
    N = len(prompts)
    sequences = torch.full((N, T), pad_id, dtype=torch.long)
    attention_mask = torch.zeros(N, T, dtype=torch.long)
    response_mask = torch.zeros(N, T, dtype=torch.long)
    for i, (p, r) in enumerate(zip(prompts, responses)):
        n_p, n = len(p), len(p) + len(r)
        sequences[i, :n] = torch.tensor(list(p) + list(r), dtype=torch.long)
        attention_mask[i, :n] = 1
        response_mask[i, n_p:n] = 1
    return sequences, attention_mask, response_mask
