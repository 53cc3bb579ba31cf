"""Packed training: micro-batches by token budget, sequences back to back, response-only log-probs.

The padded path (train/logprobs.py) runs every micro-batch at its longest row and takes the LM head
over every position, materialising [N, T, V] logits. Here instead:

1. `token_budget_groups(lengths, budget, unit)`: whole units (a row, or a DPO pair of two rows)
   are grouped, longest first, into micro-batches of at most `budget` real tokens (a unit longer
   than the budget gets a micro-batch of its own; it is never split).
2. `pack_rows`: a micro-batch's right-padded rows [n, T] become one row of L = Σ lengths real
   tokens with `Segments` (decoder.py): block-diagonal causal attention, positions restarting at 0
   per sequence, no padding in any projection, MLP or norm.
3. `packed_logprobs`: the LM head runs only on the R hidden states that predict a scored (response)
   token, through `lm_head_logprobs.token_logprobs_from_hidden` in row chunks, so no [N, T, V] — nor
   even [R, V] — tensor exists; entropy comes from the same pass. The per-token results are
   scattered back to the micro-batch's [n, T] layout, so every loss is today's, unchanged.

Position t of a row holds log π(token_t | tokens_<t), 0 where not scored — the same alignment as
`sequence_logprobs`, which the tests compare against to 1e-6 in fp32.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fastrlhf.model.decoder import CausalLM, Segments
from fastrlhf.rollout.sampler import SamplingParams
from fastrlhf.train.lm_head_logprobs import token_logprobs_from_hidden


def token_budget_groups(lengths: list[int], budget: int, unit: int = 1) -> list[list[int]]:
    """Row indices grouped into micro-batches of ≤ `budget` tokens, whole units of `unit` rows kept
    together (rows u·unit .. u·unit + unit − 1), units taken longest first (first fit)."""
    units = len(lengths) // unit
    sizes = [sum(lengths[u * unit:(u + 1) * unit]) for u in range(units)]
    groups: list[list[int]] = []
    loads: list[int] = []
    for u in sorted(range(units), key=lambda u: (-sizes[u], u)):
        for g, load in enumerate(loads):
            if load + sizes[u] <= budget:
                groups[g].append(u)
                loads[g] += sizes[u]
                break
        else:
            groups.append([u])
            loads.append(sizes[u])
    return [[u * unit + r for u in sorted(g) for r in range(unit)] for g in groups]


@dataclass
class PackedRows:
    input_ids: torch.Tensor  # [L] the real tokens of every row, back to back
    segments: Segments
    predictors: torch.Tensor  # [R] packed index of the hidden state predicting each scored token
    tokens: torch.Tensor  # [R] the scored tokens
    rows: torch.Tensor  # [R] where each scored token sits in the [n, T] micro-batch
    columns: torch.Tensor  # [R]
    shape: tuple[int, int]  # (n, T)


def pack_rows(sequences: torch.Tensor, attention_mask: torch.Tensor, score_mask: torch.Tensor) -> PackedRows:
    """Right-padded rows (sequences, attention_mask, score_mask [n, T]) → one packed row.

    Scored positions are those with score_mask = 1 and t ≥ 1 (position 0 is never predicted)."""
    device = sequences.device
    lengths = attention_mask.sum(1)
    real = attention_mask.bool()
    starts = torch.cumsum(lengths, 0) - lengths  # [n] packed offset of each row
    scored = score_mask.bool() & real
    scored[:, 0] = False
    rows, columns = scored.nonzero(as_tuple=True)
    return PackedRows(input_ids=sequences[real], segments=Segments.from_lengths(lengths.tolist(), device),
                      predictors=starts[rows] + columns - 1, tokens=sequences[rows, columns], rows=rows,
                      columns=columns, shape=tuple(sequences.shape))


def packed_logprobs(model: CausalLM, packed: PackedRows, params: SamplingParams,
                    compute_dtype: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """→ (log-probs [n, T] of the scored tokens under `params`' distribution, differentiable; entropy
    [n, T] of that distribution at the same positions, detached); 0 elsewhere."""
    hidden = model.packed_hidden_states(packed.input_ids, packed.segments)  # [L, d]
    logp, entropy = token_logprobs_from_hidden(hidden[packed.predictors], model.output_weight, packed.tokens, params,
                                               compute_dtype=compute_dtype)
    index = (packed.rows, packed.columns)
    zeros = torch.zeros(packed.shape, dtype=torch.float32, device=logp.device)
    return zeros.index_put(index, logp), zeros.index_put(index, entropy.detach())


def micro_batch_rows(attention_mask: torch.Tensor, micro_batch_size: int, micro_batch_tokens: int,
                     unit: int = 1) -> list[torch.Tensor]:
    """How a batch is cut into micro-batches: by token budget (`micro_batch_tokens` > 0, packed) or
    by `micro_batch_size` rows in order (padded). Whole units of `unit` rows stay together."""
    n = attention_mask.shape[0]
    if micro_batch_tokens > 0:
        lengths = attention_mask.sum(1).tolist()
        return [torch.tensor(rows, dtype=torch.long) for rows in token_budget_groups(lengths, micro_batch_tokens, unit)]
    rows_per_micro = max(unit, micro_batch_size // unit * unit)
    return list(torch.arange(n).split(rows_per_micro))
