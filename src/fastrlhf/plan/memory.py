"""Per-GPU memory model (ReaLHF sec. 5.1, closed form), in bytes.

Implemented (P = parameters of the largest pipeline stage, see `stage_params`):
- weights: 2P / tp (bf16, everything tensor-parallel incl. vocab-parallel embedding and head;
  replicated norms are counted as split -- an error of O(h) bytes).
- training states, mixed-precision Adam as in Megatron: bf16 weights 2, fp32 gradient accumulator
  4, fp32 master weights + Adam m + v 12 bytes per parameter (18 in total), divided by tp;
  ZeRO stage >= 1 shards the 12 over dp, >= 2 also the 4, >= 3 also the 2. With fp32 weights
  (dtype_bytes 4, our CPU runs) the weights are the master copy: 4 + 4 + 8 = 16 bytes.
- training activations, 1F1B: the first stage holds min(pp, n_micro) micro-batches in flight, each
  tokens_mb * act_bytes_per_token_layer * ceil(L/pp) / tp (sequence parallelism shards all of it),
  plus the fp32 logits of one micro-batch tokens_mb * 4V / tp (vocab-parallel), times
  `logit_copies`: 1 for a fused in-place cross-entropy (Megatron's vocab-parallel loss, the
  planner's default); 3 for plain `F.cross_entropy` (our CPU trainer): the log-softmax output it
  saves, then in backward the gradient w.r.t. it and the gradient w.r.t. the logits.
- forward-only activations: one layer's activations of a micro-batch plus its logits, / tp.
- KV cache per sequence of length S: S * 2 * ceil(L/pp) * kv_dim * 2 / min(tp, n_kv_heads)
  (key/value heads are replicated once tp exceeds them).
- prefill runs in chunks of PREFILL_CHUNK tokens: one chunk's layer activations + logits.
Left out: CUDA context and allocator fragmentation (folded into Accelerator.memory_eff), data
batches, communication buffers, temporary optimizer buffers.
"""

from __future__ import annotations

import math

from fastrlhf.plan.layout import Layout
from fastrlhf.plan.model_spec import ModelSpec

PREFILL_CHUNK = 4096
ADAM_STATE_BYTES = 12
GRAD_BYTES = 4


def stage_params(model: ModelSpec, pp: int) -> int:
    """Parameters of the largest pipeline stage: ceil(L/pp) layers plus embedding (first stage)
    or head (last stage), whichever is larger; the whole model when pp == 1."""
    if pp == 1:
        return model.n_params
    layers = math.ceil(model.n_layers / pp) * model.layer_params
    return layers + max(model.embed_params, model.head_params)


def weight_bytes(model: ModelSpec, layout: Layout) -> float:
    return stage_params(model, layout.pp) * model.dtype_bytes / layout.tp


def train_state_bytes(model: ModelSpec, layout: Layout, zero_stage: int) -> float:
    per_gpu = stage_params(model, layout.pp) / layout.tp
    master = 4 if model.dtype_bytes >= 4 else 0  # fp32 weights need no separate master copy
    weights, grads, optim = model.dtype_bytes, GRAD_BYTES, ADAM_STATE_BYTES - master
    if zero_stage >= 1:
        optim /= layout.dp
    if zero_stage >= 2:
        grads /= layout.dp
    if zero_stage >= 3:
        weights /= layout.dp
    return per_gpu * (weights + grads + optim)


def train_act_bytes(model: ModelSpec, layout: Layout, tokens_mb: float, n_micro: int,
                    logit_copies: int = 1) -> float:
    layers = math.ceil(model.n_layers / layout.pp)
    in_flight = min(layout.pp, n_micro)
    acts = tokens_mb * model.act_bytes_per_token_layer * layers * in_flight
    return (acts + logit_copies * tokens_mb * model.logit_bytes_per_token) / layout.tp


def forward_act_bytes(model: ModelSpec, layout: Layout, tokens_mb: float) -> float:
    per_token = model.act_bytes_per_token_layer + model.logit_bytes_per_token
    return tokens_mb * per_token / layout.tp


def kv_bytes_per_seq(model: ModelSpec, layout: Layout, seq_len: int) -> float:
    layers = math.ceil(model.n_layers / layout.pp)
    split = min(layout.tp, model.n_kv_heads)
    return seq_len * 2 * layers * model.kv_dim * model.dtype_bytes / split


def prefill_act_bytes(model: ModelSpec, layout: Layout, prompt_tokens: int) -> float:
    return forward_act_bytes(model, layout, min(prompt_tokens, PREFILL_CHUNK))
