"""Analytic time model of one model call on one mesh and layout (ReaLHF sec. 5.1), in seconds.

Notation: b sequences per DP rank (ceil(batch / dp)), prompt length Lp, generation length Lg,
S = Lp + Lg, F(c) = forward FLOPs per token attending to c keys (model_spec), R = achievable
FLOP/s, W = memory bandwidth x bw_eff, h = hidden size.

- GEMM rate for a micro-batch of t tokens (rows): R(t) = peak * flops_eff * t / (t + t_half),
  t_half = Accelerator.gemm_half_rows (T_HALF = 64 for GPUs, an assumption). A saturating curve
  standing in for a profiled table: small GEMMs do not fill the device. On the cpu profile t_half
  depends on the bytes of weights one GPU multiplies with in the pass (`streamed_bytes`), read
  off the measured table Accelerator.half_rows_by_bytes, log-linearly between its points and
  clamped at its ends (`half_rows`): at 8 rows a CPU GEMM is bound by how fast it streams its
  weights, and calibrate.py measured that rate halve between weight sets that fit the cache
  share (~35 GFLOP/s at <= 32 MB) and ones that do not (~18 GFLOP/s at >= 128 MB). The LM head
  runs on the same curve: at equal weight bytes it measured within 10 % of the projections.
  (Until 2026-11-27 the head had its own t_half, and one set of 64 MB stood for all sizes: a
  90 MB decoder's decode was predicted 23-28 % too fast.)
- Ring all-reduce of n bytes over g GPUs (Patarasuk & Yuan 2009): alpha + 2 (g-1)/g * n / B.
- A pipelined pass (GPipe / 1F1B schedule, Narayanan et al. 2021 eq. 1): with m micro-batches over
  pp stages the pass takes (m + pp - 1) * t_stage, t_stage = one micro-batch on one stage:
    compute  k * t_mb * F(ctx) / (tp * pp * R(t_mb))        k = 1 forward, 3 forward+backward
    TP comm  j * 2 * ceil(L/pp) all-reduces of t_mb * h * 2 bytes inside the node  j = 1 or 2
    PP comm  j point-to-point sends of t_mb * h * 2 bytes (inter-node if the mesh spans nodes).
  Full-sequence passes use ctx = (S + 1) / 2 (causal attention, flash kernels skip the masked half).
- Training adds the DP gradient all-reduce of 2 * P_stage / tp bytes (bf16 gradients, not
  overlapped with backward: conservative) and the Adam step, memory-bound at 30 bytes per
  parameter touched (read fp32 master, m, v, grad; write master, m, v, bf16 copy: a fused kernel),
  over dp when ZeRO shards it. `adam_bytes` overrides the 30: PyTorch's unfused (foreach) fp32
  AdamW, which our CPU trainer runs, makes nine passes, UNFUSED_ADAMW_BYTES = 92 bytes/parameter:
  decay p*=(1-lr*wd) 8, m.lerp_(g) 12, v*=b2 8, g*(1-b2) -> new 8, v.addcmul_ 16, sqrt(v) -> new 8,
  /bias-correction 8, +eps 8, p.addcdiv_(m, .) 16.
  It also adds the loss over the logits: tokens * V / tp * Accelerator.loss_time (log-softmax
  forward and backward, the gradient buffer's fill; V = 1 for a value head). 0 on the GPU
  profiles; measured on the cpu, where for a hidden-128 decoder with vocab 8192 it is ~20 % of a
  training step.
- Generation of b sequences in waves of `decode_batch` and a last wave of the remainder
  (b mod decode_batch): each wave = prefill (a forward pass over its sequences' Lp tokens, pp
  micro-batches) + Lg decode steps at the mean context Lp + Lg/2. Fewer waves read the weights
  fewer times while the KV and FLOP totals stay, and at a given number of waves equal ones are
  fastest (max(weights, compute) per step), so the evaluator decodes in the fewest waves that
  fit, balanced (evaluate.balanced_decode_batch). (Until 2026-11-27 the
  last wave was charged as a full one: a call with more memory and a larger decode batch could
  come out slower, which broke the lower bound in bounds.py, e.g. PPO 7B, 8 GPUs, generation
  2048: bound 79.2 s above a 72.4 s plan.)
  A decode step's GEMMs are memory-bound or compute-bound, whichever is slower; the attention
  that follows them in every layer reads the KV cache in kernels of its own (no overlap with the
  GEMMs: the next GEMM needs its output), then communication:
    GEMMs      max(2 P / tp / W,  decode_batch * F(ctx) / (tp * pp * R(decode_batch / pp)))
               (P without an untied embedding table: a lookup reads one row per sequence;
               with pp micro-batches each stage re-reads its weights once per micro-batch, so
               pipelining saves memory but not weight reads -- ReaLHF's reason to decode without pp)
    attention  decode_batch * ctx * kv_bytes_per_token / (min(tp, kv_heads) * pp) / W_kv
               (W_kv = Accelerator.kv_read_bw, default W; measured on the cpu)
    comm       2 L all-reduces of decode_batch/pp * h * 2 bytes + pp point-to-point hops.
  (Before 2026-11-23 20:00 the KV bytes sat inside the max with the weights; the two forms agree
  whenever the GEMMs are memory-bound, as GPU decode mostly is.)
- Reallocation (ReaLHF sec. 4.2): every destination GPU receives its 2 P_stage / tp bytes of
  weights; transfers to different GPUs run in parallel, so time = alpha + bytes / link bandwidth
  (NVLink when source and destination meshes share one node, else InfiniBand). Zero when the
  layout and mesh are unchanged. Partial reuse of slices already on the GPU is left out.
- Reload of an offloaded model: 2 P_stage / tp bytes over the host link.
- Data transfer between meshes: alpha + bytes / (min(|src|, |dst|) * link bandwidth).
- Dispatch overheads (Accelerator.step_latency, layer_latency; 0 for the GPU profiles, measured
  for the cpu profile by calibrate.py): a decode step adds step_latency + L * layer_latency; a
  pipeline stage adds j * ceil(L/pp) * layer_latency (j = 1 forward, 2 forward+backward).
- Sampling (Accelerator.logit_time; 0 for the GPU profiles, measured for the cpu profile): the
  sampler of a decode step reads every logit of every sequence of the DP rank (log-softmax over
  the vocabulary, argmax / inverse CDF, gather), decode_batch * V * logit_time after the head
  GEMM (the last stage, after TP ranks gathered the logits); its fixed cost is in step_latency.
- A decode step streams the weights it multiplies with: all parameters except an untied
  embedding table, of which it reads only one row per sequence.
Left out: response-length variance (every sequence generates exactly Lg tokens), sampling cost on
GPUs, kernel-launch overheads, compute/communication overlap.
"""

from __future__ import annotations

import math

from fastrlhf.plan.hardware import Accelerator
from fastrlhf.plan.layout import Layout, Mesh
from fastrlhf.plan.memory import stage_params
from fastrlhf.plan.model_spec import ModelSpec

T_HALF = 64.0
OPTIMIZER_BYTES_PER_PARAM = 30
UNFUSED_ADAMW_BYTES = 92


def half_rows(acc: Accelerator, weight_bytes: float) -> float:
    """t_half for GEMMs over `weight_bytes` of weights: Accelerator.half_rows_by_bytes
    interpolated in log(bytes) and clamped at its ends, or gemm_half_rows without a table."""
    table = acc.half_rows_by_bytes
    if not table:
        return acc.gemm_half_rows
    if weight_bytes <= table[0][0]:
        return table[0][1]
    for (b0, t0), (b1, t1) in zip(table, table[1:]):
        if weight_bytes <= b1:
            return t0 + (t1 - t0) * math.log(weight_bytes / b0) / math.log(b1 / b0)
    return table[-1][1]


def gemm_rate(acc: Accelerator, tokens: float, weight_bytes: float = 0.0) -> float:
    return acc.flops * tokens / (tokens + half_rows(acc, weight_bytes))


def streamed_bytes(model: ModelSpec, layout: Layout) -> float:
    """Weight bytes one GPU multiplies with in a pass: its stage's share of every parameter but an
    untied embedding table (a lookup reads one row per token)."""
    streamed = model.n_params - (0 if model.tie_embeddings else model.embed_params)
    return streamed * model.dtype_bytes / (layout.tp * layout.pp)


def matmul_time(model: ModelSpec, acc: Accelerator, tokens: float, rows: float, ctx: float,
                weight_bytes: float) -> float:
    """Forward FLOPs of `tokens` tokens at context ctx in GEMMs of `rows` rows over weight_bytes
    of weights, at R(rows). Divide by tp * pp for a shard."""
    return tokens * model.flops_fwd_per_token(ctx) / gemm_rate(acc, rows, weight_bytes)


def allreduce_time(nbytes: float, group: int, bandwidth: float, latency: float) -> float:
    if group <= 1:
        return 0.0
    return latency + 2.0 * (group - 1) / group * nbytes / bandwidth


def p2p_time(nbytes: float, bandwidth: float, latency: float) -> float:
    return latency + nbytes / bandwidth


def stage_time(model: ModelSpec, acc: Accelerator, layout: Layout, tokens_mb: float, ctx: float,
               backward: bool, pp_intra: bool) -> float:
    """One micro-batch through one pipeline stage (forward, or forward+backward)."""
    k, j = (3, 2) if backward else (1, 1)
    compute = k * matmul_time(model, acc, tokens_mb, tokens_mb, ctx,
                              streamed_bytes(model, layout)) / (layout.tp * layout.pp)
    act = tokens_mb * model.hidden * model.dtype_bytes
    n_reduce = j * 2 * math.ceil(model.n_layers / layout.pp)
    tp_comm = n_reduce * allreduce_time(act, layout.tp, acc.link_bw(True), acc.latency(True))
    pp_comm = 0.0
    if layout.pp > 1:
        pp_comm = j * p2p_time(act, acc.link_bw(pp_intra), acc.latency(pp_intra))
    overhead = j * math.ceil(model.n_layers / layout.pp) * acc.layer_latency
    return compute + tp_comm + pp_comm + overhead


def pass_time(model: ModelSpec, acc: Accelerator, layout: Layout, tokens: float, ctx: float,
              n_micro: int, backward: bool, pp_intra: bool) -> float:
    """Pipelined pass over `tokens` tokens of one DP rank in `n_micro` micro-batches."""
    per_stage = stage_time(model, acc, layout, tokens / n_micro, ctx, backward, pp_intra)
    return (n_micro + layout.pp - 1) * per_stage


def grad_sync_time(model: ModelSpec, acc: Accelerator, layout: Layout, dp_intra: bool) -> float:
    nbytes = stage_params(model, layout.pp) * model.dtype_bytes / layout.tp
    return allreduce_time(nbytes, layout.dp, acc.link_bw(dp_intra), acc.latency(dp_intra))


def optimizer_time(model: ModelSpec, acc: Accelerator, layout: Layout, zero_stage: int,
                   adam_bytes: float = OPTIMIZER_BYTES_PER_PARAM) -> float:
    params = stage_params(model, layout.pp) / layout.tp
    if zero_stage >= 1:
        params /= layout.dp
    return params * adam_bytes / acc.mem_bw


def per_rank(batch: int, layout: Layout) -> int:
    return math.ceil(batch / layout.dp)


def inference_time(model, acc, layout, batch, seq_len, n_micro, pp_intra) -> float:
    tokens = per_rank(batch, layout) * seq_len
    return pass_time(model, acc, layout, tokens, (seq_len + 1) / 2, n_micro, False, pp_intra)


def loss_time(model: ModelSpec, acc: Accelerator, layout: Layout, tokens: float) -> float:
    """Loss forward + backward over the logits of `tokens` tokens (vocab-parallel over tp)."""
    logits = 1 if model.value_head else model.vocab
    return tokens * logits / layout.tp * acc.loss_time


def train_time(model, acc, layout, batch, seq_len, n_micro, pp_intra, dp_intra, zero_stage,
               adam_bytes: float = OPTIMIZER_BYTES_PER_PARAM) -> float:
    tokens = per_rank(batch, layout) * seq_len
    step = pass_time(model, acc, layout, tokens, (seq_len + 1) / 2, n_micro, True, pp_intra)
    return step + loss_time(model, acc, layout, tokens) + grad_sync_time(
        model, acc, layout, dp_intra) + optimizer_time(model, acc, layout, zero_stage, adam_bytes)


def decode_step_time(model: ModelSpec, acc: Accelerator, layout: Layout, batch: int, ctx: float,
                     pp_intra: bool) -> float:
    kv_split = min(layout.tp, model.n_kv_heads) * layout.pp
    weights = streamed_bytes(model, layout)
    memory = weights * layout.pp / acc.mem_bw
    attention = batch * ctx * model.kv_bytes_per_token / kv_split / (acc.kv_read_bw or acc.mem_bw)
    mb = batch / layout.pp
    compute = matmul_time(model, acc, batch, mb, ctx, weights) / (layout.tp * layout.pp)
    act = mb * model.hidden * model.dtype_bytes
    comm = 2 * model.n_layers * allreduce_time(act, layout.tp, acc.link_bw(True), acc.latency(True))
    if layout.pp > 1:
        comm += layout.pp * p2p_time(act, acc.link_bw(pp_intra), acc.latency(pp_intra))
    overhead = acc.step_latency + model.n_layers * acc.layer_latency
    sampling = batch * model.vocab * acc.logit_time
    return max(memory, compute) + attention + comm + overhead + sampling


def wave_time(model, acc, layout, wave_batch, prompt_len, gen_len, pp_intra) -> float:
    """One wave of `wave_batch` sequences: prefill, then gen_len decode steps."""
    prefill = pass_time(model, acc, layout, wave_batch * prompt_len, (prompt_len + 1) / 2,
                        layout.pp, False, pp_intra)
    step = decode_step_time(model, acc, layout, wave_batch, prompt_len + gen_len / 2, pp_intra)
    return prefill + gen_len * step


def generate_time(model, acc, layout, batch, prompt_len, gen_len, decode_batch, pp_intra) -> float:
    """b sequences per DP rank: b // decode_batch full waves, then one wave of the remainder."""
    b = per_rank(batch, layout)
    full, rest = divmod(b, decode_batch)
    total = full * wave_time(model, acc, layout, decode_batch, prompt_len, gen_len, pp_intra)
    if rest:
        total += wave_time(model, acc, layout, rest, prompt_len, gen_len, pp_intra)
    return total


def realloc_time(model: ModelSpec, acc: Accelerator, dst_layout: Layout, intra: bool) -> float:
    nbytes = stage_params(model, dst_layout.pp) * model.dtype_bytes / dst_layout.tp
    return p2p_time(nbytes, acc.link_bw(intra), acc.latency(intra))


def reload_time(model: ModelSpec, acc: Accelerator, layout: Layout) -> float:
    return stage_params(model, layout.pp) * model.dtype_bytes / layout.tp / acc.host_bw


def transfer_time(nbytes: float, src: Mesh, dst: Mesh, acc: Accelerator, intra: bool) -> float:
    if src == dst:
        return 0.0
    return p2p_time(nbytes / min(src.size, dst.size), acc.link_bw(intra), acc.latency(intra))
