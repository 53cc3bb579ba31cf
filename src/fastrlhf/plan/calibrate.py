"""Micro-benchmark of this machine -> a measured `cpu` accelerator profile for the cost model.

Each number is the *minimum* of several timed repeats after a warm-up (`best_time`), at a fixed
thread count (`torch.set_num_threads(threads)` for the duration, restored afterwards). Minimum,
not median: on this shared VM another process or the hypervisor only ever *adds* time, in phases
lasting seconds (the same 40-token generate measured 128-213 ms in one minute), so the minimum is
the estimate of the undisturbed machine; `validate.py` measures the decoder the same way.

- flops: fp32 GEMM peak P of the saturating curve R(t) = P * t / (t + t_half) (cost.gemm_rate),
  from the rates of `x @ W^T` at ROWS = 512 and SMALL_ROWS = 8 rows over the same weight set: the
  matrices W [N, K] with the (K, N) shapes of the q/k/v, o, gate/up and down projections and the
  LM head (vocab 8192) of hidden-128, 256 and 512 decoders (SHAPES), cycled to WEIGHT_BYTES =
  64 MB. The curve says a GEMM of t rows takes, per weight element, 2t / P (the multiply-adds)
  plus a fixed t_half * 2 / P (streaming the element in), so the two rates give
  P = 2 (ROWS - SMALL_ROWS) / (2 ROWS / R_512 - 2 SMALL_ROWS / R_8) (`gemm_peak`). (Before
  2026-11-27 the 512-row rate itself was used as P, and t_half was then charged on top of it a
  second time: a 90 MB decoder's forward came out 10-25 % slow.)
- half_rows_by_bytes: t_half of the cost model's saturating GEMM curve R(t) = flops * t /
  (t + t_half) (cost.gemm_rate) as a function of the weight bytes a pass streams: for each size
  in WORKING_SETS (2 MB to 128 MB) the rate R_s of `x @ W^T` with SMALL_ROWS = 8 rows (a decode
  step's batch) over the first matrices of SHAPES totalling that size, cycled; t_half = t *
  (flops / R_s - 1). With few rows a CPU GEMM is limited by how fast one core streams the
  weights, and that depends on where they live: measured 33-40 GFLOP/s up to 32 MB and 17-19
  GFLOP/s at 128-256 MB on this VM (whose 480 MB L3 is shared with other tenants, so the knee
  is not at the nominal cache size; hence measured, not derived). The LM-head shapes (N = 8192)
  ran within 10 % of the projections at equal bytes, so one table serves both. gemm_half_rows is
  the 64 MB entry (what the profile printed before the table existed).
- mem_bw: bandwidth of a large copy (COPY_BYTES = 256 MB, beyond any last-level cache), counting
  bytes read + bytes written.

- step_latency, layer_latency: fixed costs of one decode step of our rollout engine (embedding,
  masks, head, sampler) and of one decoder layer in it, from negligible-size decoders (hidden 64,
  vocab 64, so FLOPs and bytes are nothing) generating SMALL_ROWS = 8 sequences, the batch the
  GEMM table is measured at (at batch 1 they came out ~15 % lower: 0.34 against 0.39 ms/layer):
  the per-token time t(n) of `generate` with n in LATENCY_LAYERS layers, fitted by least squares
  to t(n) = step_latency + n * layer_latency (four points instead of the difference of two: each
  point is itself a difference of two timings, and the fit halves the noise of the slope). They
  stand for Python dispatch and kernel-call overheads, which the GPU
  profiles leave out and which dominate tiny models on a CPU.
- kv_read_bw: bytes/s at which a decode step's attention reads a layer's K and V cache:
  `short_query_attention` (our engine's decode attention) on the transposed [B, K, S, h] cache
  views the engine passes it, B = SMALL_ROWS, K = 4, h = 64, S = KV_SPAN vs S = 1 (the fixed
  cost is in layer_latency): 2 * B * (S - 1) * K * h * 4 bytes / time difference. The views are
  strided, so the matmuls first gather them (copies); a plain copy's bandwidth overstates it.
- logit_time: seconds per logit of the rollout sampler beyond its fixed cost (greedy: log-softmax
  over the vocabulary, argmax, gather; `rollout.sampler.sample`), from [SMALL_ROWS, LOGIT_VOCAB]
  and [1, 64] logits: (t_big - t_small) / (SMALL_ROWS * LOGIT_VOCAB - 64). The fixed part is in
  step_latency already (its decoders have vocab 64). A decode step's sampler touches every logit
  of every sequence (b * V elements) several times; at b = 8, V = 8192 it is ~0.2 ms, as much as
  the whole head GEMM of a hidden-32 model, and it grows with the batch, which the batch-1
  latencies above cannot see.

- loss_time: seconds per logit of a training loss (`F.cross_entropy` forward and backward,
  which includes log-softmax, its backward and the filled gradient buffer) on [ROWS, LOGIT_VOCAB]
  vs [ROWS, 64] logits: (t_big - t_small) / (ROWS * (LOGIT_VOCAB - 64)).

Left out: bf16 (our CPU runs are fp32), threads
other than the one count measured. torch (and, for the latencies, our decoder and engine) is
imported inside the functions, so `plan/` stays importable without it.
"""

from __future__ import annotations

import os
import time
from contextlib import contextmanager
from typing import Callable

from fastrlhf.plan.hardware import GiB, Accelerator, accelerator_from_measurements

ROWS = 512
SMALL_ROWS = 8
SHAPES = ((128, 384), (128, 128), (128, 704), (352, 128), (128, 8192),
          (256, 768), (256, 256), (256, 1376), (688, 256), (256, 8192),
          (512, 1536), (512, 512), (512, 2752), (1376, 512), (512, 8192))
WEIGHT_BYTES = 64 * 2**20
WORKING_SETS = tuple(m * 2**20 for m in (2, 4, 8, 16, 32, 64, 128))
COPY_BYTES = 256 * 2**20
LATENCY_LAYERS = (1, 2, 4, 8)
LOGIT_VOCAB = 8192
KV_SPAN = 128


def run_times(fn: Callable[[], object], repeats: int = 7, warmup: int = 2) -> list[float]:
    """Wall times of `fn()` in seconds over `repeats` runs after `warmup` untimed runs."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def best_time(fn: Callable[[], object], repeats: int = 7, warmup: int = 2) -> float:
    """Minimum wall time of `fn()` (interference only adds time; see the module docstring)."""
    return min(run_times(fn, repeats, warmup))


@contextmanager
def num_threads(threads: int | None):
    """Run torch with `threads` intra-op threads (None = leave as is), restoring the old value."""
    import torch

    old = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def weight_set(shapes=SHAPES, total_bytes: int = WEIGHT_BYTES):
    """fp32 matrices [N, K] of `shapes` in order, cycled until they hold `total_bytes`."""
    import torch

    gen = torch.Generator().manual_seed(0)
    weights, nbytes = [], 0
    while nbytes < total_bytes:
        k, n = shapes[len(weights) % len(shapes)]
        weights.append(torch.randn(n, k, generator=gen))
        nbytes += 4 * n * k
    return weights


def matmul_rate(rows: int, weights, repeats: int = 5) -> float:
    """FLOP/s of fp32 `linear` of `rows` input rows through every matrix of `weights`."""
    import torch
    import torch.nn.functional as F

    inputs = {w.shape[1]: torch.randn(rows, w.shape[1]) for w in weights}
    flops = sum(2.0 * rows * w.shape[0] * w.shape[1] for w in weights)
    seconds = best_time(lambda: [F.linear(inputs[w.shape[1]], w) for w in weights], repeats)
    return flops / seconds


def copy_bandwidth(nbytes: int = COPY_BYTES, repeats: int = 5) -> float:
    """Bytes/s of `dst.copy_(src)` on fp32 tensors of `nbytes`: (read + write) / best time."""
    import torch

    src = torch.ones(nbytes // 4)
    dst = torch.zeros_like(src)
    return 2.0 * nbytes / best_time(lambda: dst.copy_(src), repeats)


def half_rows(flops: float, rate_small: float, rows: int = SMALL_ROWS) -> float:
    """t_half with R(rows) = flops * rows / (rows + t_half) = rate_small."""
    return max(0.0, rows * (flops / rate_small - 1.0))


def gemm_peak(rate_big: float, rate_small: float, big: int = ROWS, small: int = SMALL_ROWS) -> float:
    """P of R(t) = P t / (t + t_half) through the rates at `big` and `small` rows (same weights)."""
    return 2.0 * (big - small) / (2.0 * big / rate_big - 2.0 * small / rate_small)


def half_rows_table(flops: float, sizes=WORKING_SETS, repeats: int = 9) -> tuple:
    """((bytes, t_half), ...): the SMALL_ROWS rate over weight sets of each size in `sizes`."""
    return tuple((float(size), half_rows(flops, matmul_rate(SMALL_ROWS, weight_set(SHAPES, size),
                                                            repeats)))
                 for size in sizes)


def decode_token_time(model, batch: int = 1, prompt: int = 8, short: int = 4, long: int = 36,
                      repeats: int = 5) -> float:
    """Seconds per generated token of `RolloutEngine.generate` (greedy, `batch` sequences): the
    minimum time of `long` new tokens minus that of `short`, over `long - short` (prefill and
    set-up cancel). Short and long runs alternate, so a slow phase of the machine hits both."""
    from fastrlhf.rollout.engine import RolloutEngine
    from fastrlhf.rollout.sampler import SamplingParams

    engine = RolloutEngine(model, num_slots=batch)
    vocab = model.config.vocab_size
    prompts = [[(7 * i + j) % vocab for j in range(prompt)] for i in range(batch)]
    runs = {n: SamplingParams(temperature=0, max_new_tokens=n) for n in (short, long)}
    times = {n: [] for n in runs}
    for _ in range(repeats + 1):
        for n, params in runs.items():
            start = time.perf_counter()
            engine.generate(prompts, params)
            times[n].append(time.perf_counter() - start)
    best = {n: min(t[1:]) for n, t in times.items()}  # the first round is a warm-up
    return (best[long] - best[short]) / (long - short)


def kv_read_bandwidth(batch: int = SMALL_ROWS, span: int = KV_SPAN, kv_heads: int = 4,
                      head_dim: int = 64, repeats: int = 30) -> float:
    """Bytes/s of K and V read by the engine's decode attention (`short_query_attention` on the
    transposed cache views the rollout engine passes it), beyond its fixed cost (span 1)."""
    import torch

    from fastrlhf.model.decoder import short_query_attention

    gen = torch.Generator().manual_seed(0)
    q = torch.randn(batch, kv_heads, 1, head_dim, generator=gen)

    def seconds(s: int) -> float:
        k = torch.randn(batch, s, kv_heads, head_dim, generator=gen).transpose(1, 2)  # [B, K, S, h]
        v = torch.randn(batch, s, kv_heads, head_dim, generator=gen).transpose(1, 2)
        mask = torch.ones(batch, 1, 1, s, dtype=torch.bool)
        return best_time(lambda: short_query_attention(q, k, v, mask), repeats, warmup=3)

    nbytes = 2 * batch * (span - 1) * kv_heads * head_dim * 4
    return nbytes / max(seconds(span) - seconds(1), 1e-9)


def logit_time(vocab: int = LOGIT_VOCAB, rows: int = SMALL_ROWS, repeats: int = 50) -> float:
    """Seconds per logit element of the greedy rollout sampler beyond its fixed cost."""
    import torch

    from fastrlhf.rollout.sampler import SamplingParams, sample

    params = SamplingParams(temperature=0)
    gen = torch.Generator().manual_seed(0)
    big, small = torch.randn(rows, vocab, generator=gen), torch.randn(1, 64, generator=gen)
    u_big, u_small = torch.rand(rows, generator=gen), torch.rand(1, generator=gen)
    t_big = best_time(lambda: sample(big, params, u_big), repeats, warmup=5)
    t_small = best_time(lambda: sample(small, params, u_small), repeats, warmup=5)
    return max(0.0, (t_big - t_small) / (rows * vocab - 64))


def loss_time(vocab: int = LOGIT_VOCAB, rows: int = ROWS, repeats: int = 7) -> float:
    """Seconds per logit of `F.cross_entropy` forward + backward beyond its fixed cost."""
    import torch
    import torch.nn.functional as F

    gen = torch.Generator().manual_seed(0)
    targets = torch.randint(0, 64, (rows,), generator=gen)

    def seconds(v: int) -> float:
        logits = torch.randn(rows, v, generator=gen, requires_grad=True)
        return best_time(lambda: F.cross_entropy(logits, targets).backward(), repeats, warmup=2)

    return max(0.0, (seconds(vocab) - seconds(64)) / (rows * (vocab - 64)))


def dispatch_latencies(layers=LATENCY_LAYERS) -> tuple[float, float]:
    """(step_latency, layer_latency) from decode steps of negligible-size decoders."""
    import torch

    from fastrlhf.model.config import ModelConfig
    from fastrlhf.model.decoder import CausalLM

    times = []
    for n in layers:
        torch.manual_seed(0)
        cfg = ModelConfig(vocab_size=64, hidden_size=64, intermediate_size=64, num_layers=n,
                          num_heads=1, num_kv_heads=1, head_dim=64)
        times.append(decode_token_time(CausalLM(cfg), batch=SMALL_ROWS, long=68))
    mean_n, mean_t = sum(layers) / len(layers), sum(times) / len(times)
    slope = sum((n - mean_n) * (t - mean_t) for n, t in zip(layers, times)) / \
        sum((n - mean_n) ** 2 for n in layers)
    layer = max(0.0, slope)
    return max(0.0, mean_t - layer * mean_n), layer


def physical_memory() -> float:
    try:
        return float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return 24.0 * GiB


def calibrate_cpu(threads: int | None = 1) -> Accelerator:
    """Measure this machine (a few seconds) and return the `cpu` profile built from it."""
    with num_threads(threads):
        weights = weight_set()
        flops = gemm_peak(matmul_rate(ROWS, weights, repeats=5),
                          matmul_rate(SMALL_ROWS, weights, repeats=9))
        del weights
        table = half_rows_table(flops)
        bandwidth = copy_bandwidth()
        step_latency, layer_latency = dispatch_latencies()
        per_logit = logit_time()
        per_loss_logit = loss_time()
        kv_bw = kv_read_bandwidth()
    at_64mb = dict(table).get(float(WEIGHT_BYTES), table[-1][1])
    return accelerator_from_measurements("cpu", flops, bandwidth, physical_memory(),
                                         gemm_half_rows=at_64mb, half_rows_by_bytes=table,
                                         step_latency=step_latency, layer_latency=layer_latency,
                                         logit_time=per_logit, kv_read_bw=kv_bw,
                                         loss_time=per_loss_logit)
