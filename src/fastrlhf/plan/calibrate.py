"""Micro-benchmark of this machine -> a measured `cpu` accelerator profile for the cost model.

Three numbers, each the median of several timed repeats after a warm-up, at a fixed thread count
(`torch.set_num_threads(threads)` for the duration, restored afterwards):

- flops: fp32 GEMM rate of `x @ W^T`, x [ROWS = 512, K], over a set of weight matrices W [N, K]
  with the (K, N) shapes of the q/k/v, o, gate/up and down projections and the LM head
  (vocab 8192) of hidden-256 and hidden-512 decoders (SHAPES), cycled until WEIGHT_BYTES = 64 MB of weights were used (more
  than the last-level cache, as in a real model): total 2*ROWS*K*N FLOPs / median time.
- gemm_half_rows: t_half of the cost model's saturating GEMM curve R(t) = flops * t / (t + t_half)
  (cost.gemm_rate), solved from the rate R_s of the same weights with SMALL_ROWS = 8 rows (a
  decode step's batch): t_half = t * (flops / R_s - 1). With few rows a CPU GEMM is limited by
  how fast one core streams the weights out of DRAM (slower than a plain copy), which this
  captures; the GPU default of 64 rows was an assumption, not a measurement.
- mem_bw: bandwidth of a large copy (COPY_BYTES = 256 MB, beyond any last-level cache), counting
  bytes read + bytes written.

- step_latency, layer_latency: fixed costs of one decode step of our rollout engine (embedding,
  masks, head, sampler) and of one decoder layer in it, from a negligible-size decoder (hidden 64,
  vocab 64, batch 1, so FLOPs and bytes are nothing): the per-token time of `generate` with 1 and
  with LATENCY_LAYERS layers gives layer_latency = (t_n - t_1) / (n - 1), step_latency =
  t_1 - layer_latency. They stand for Python dispatch and kernel-call overheads, which the GPU
  profiles leave out and which dominate tiny models on a CPU.

Left out: cache effects for weights that fit in L2/L3, bf16 (our CPU runs are fp32), threads
other than the one count measured. torch (and, for the latencies, our decoder and engine) is
imported inside the functions, so `plan/` stays importable without it.
"""

from __future__ import annotations

import os
import statistics
import time
from contextlib import contextmanager
from typing import Callable

from fastrlhf.plan.hardware import GiB, Accelerator, accelerator_from_measurements

ROWS = 512
SMALL_ROWS = 8
SHAPES = ((256, 768), (256, 256), (256, 1376), (688, 256), (256, 8192),
          (512, 1536), (512, 512), (512, 2752), (1376, 512), (512, 8192))
WEIGHT_BYTES = 64 * 2**20
COPY_BYTES = 256 * 2**20
LATENCY_LAYERS = 4


def median_time(fn: Callable[[], object], repeats: int = 7, warmup: int = 2) -> float:
    """Median wall time of `fn()` in seconds over `repeats` runs after `warmup` untimed runs."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


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
    """fp32 matrices [N, K] of `shapes`, repeated until they hold `total_bytes`."""
    import torch

    gen = torch.Generator().manual_seed(0)
    weights, nbytes = [], 0
    while nbytes < total_bytes:
        for k, n in shapes:
            weights.append(torch.randn(n, k, generator=gen))
            nbytes += 4 * n * k
    return weights


def matmul_rate(rows: int, weights, repeats: int = 5) -> float:
    """FLOP/s of fp32 `linear` of `rows` input rows through every matrix of `weights`."""
    import torch
    import torch.nn.functional as F

    inputs = {w.shape[1]: torch.randn(rows, w.shape[1]) for w in weights}
    flops = sum(2.0 * rows * w.shape[0] * w.shape[1] for w in weights)
    seconds = median_time(lambda: [F.linear(inputs[w.shape[1]], w) for w in weights], repeats)
    return flops / seconds


def copy_bandwidth(nbytes: int = COPY_BYTES, repeats: int = 5) -> float:
    """Bytes/s of `dst.copy_(src)` on fp32 tensors of `nbytes`: (read + write) / median time."""
    import torch

    src = torch.ones(nbytes // 4)
    dst = torch.zeros_like(src)
    return 2.0 * nbytes / median_time(lambda: dst.copy_(src), repeats)


def half_rows(flops: float, rate_small: float, rows: int = SMALL_ROWS) -> float:
    """t_half with R(rows) = flops * rows / (rows + t_half) = rate_small."""
    return max(0.0, rows * (flops / rate_small - 1.0))


def decode_token_time(model, batch: int = 1, prompt: int = 8, short: int = 4, long: int = 36,
                      repeats: int = 5) -> float:
    """Seconds per generated token of `RolloutEngine.generate` (greedy, `batch` sequences): the
    median time of `long` new tokens minus that of `short`, over `long - short` (prefill and set-up
    cancel)."""
    from fastrlhf.rollout.engine import RolloutEngine
    from fastrlhf.rollout.sampler import SamplingParams

    engine = RolloutEngine(model, num_slots=batch)
    vocab = model.config.vocab_size
    prompts = [[(7 * i + j) % vocab for j in range(prompt)] for i in range(batch)]

    def run(n: int) -> float:
        return median_time(lambda: engine.generate(prompts, SamplingParams(temperature=0, max_new_tokens=n)),
                           repeats, warmup=1)

    return (run(long) - run(short)) / (long - short)


def dispatch_latencies(layers: int = LATENCY_LAYERS) -> tuple[float, float]:
    """(step_latency, layer_latency) from decode steps of negligible-size decoders."""
    import torch

    from fastrlhf.model.config import ModelConfig
    from fastrlhf.model.decoder import CausalLM

    times = []
    for n in (1, layers):
        torch.manual_seed(0)
        cfg = ModelConfig(vocab_size=64, hidden_size=64, intermediate_size=64, num_layers=n,
                          num_heads=1, num_kv_heads=1, head_dim=64)
        times.append(decode_token_time(CausalLM(cfg), long=100))
    layer = max(0.0, (times[1] - times[0]) / (layers - 1))
    return max(0.0, times[0] - layer), layer


def physical_memory() -> float:
    try:
        return float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return 24.0 * GiB


def calibrate_cpu(threads: int | None = 1) -> Accelerator:
    """Measure this machine (a few seconds) and return the `cpu` profile built from it."""
    with num_threads(threads):
        weights = weight_set()
        flops = matmul_rate(ROWS, weights, repeats=3)
        small = matmul_rate(SMALL_ROWS, weights, repeats=9)
        bandwidth = copy_bandwidth()
        step_latency, layer_latency = dispatch_latencies()
    return accelerator_from_measurements("cpu", flops, bandwidth, physical_memory(),
                                         gemm_half_rows=half_rows(flops, small),
                                         step_latency=step_latency, layer_latency=layer_latency)
