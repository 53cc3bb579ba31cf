"""Micro-benchmark of this machine -> a measured `cpu` accelerator profile for the cost model.

Three numbers, each the median of several timed repeats after a warm-up, at a fixed thread count
(`torch.set_num_threads(threads)` for the duration, restored afterwards):

- flops: fp32 GEMM rate of `x @ W^T` with x [ROWS, K], W [N, K] (ROWS = 512, K = 512, N = 1376:
  the shape of an MLP projection of the hidden-512 decoders we validate on), 2*ROWS*K*N FLOPs.
- gemm_half_rows: t_half of the cost model's saturating GEMM curve R(t) = flops * t / (t + t_half)
  (cost.gemm_rate), solved from the rate R_s at SMALL_ROWS = 8 rows (a decode step's batch):
  t_half = t * (flops / R_s - 1). On GPUs the planner assumes 64 rows; one CPU core fills its
  vector units with far fewer (about 5 here), so the GPU number would make CPU decode appear
  several times compute-bound.
- mem_bw: bandwidth of a large copy (COPY_BYTES = 256 MB, beyond any last-level cache), counting
  bytes read + bytes written.

Left out: a per-operator dispatch latency (the cost model has no term for kernel-launch /
Python overheads), cache effects for weights that fit in L2/L3, more than one GEMM shape, and
bf16 (our CPU runs are fp32). torch is imported inside the functions, so `plan/` stays importable
without it.
"""

from __future__ import annotations

import os
import statistics
import time
from contextlib import contextmanager
from typing import Callable

from fastrlhf.plan.hardware import GiB, Accelerator, accelerator_from_measurements

ROWS, K, N = 512, 512, 1376
SMALL_ROWS = 8
COPY_BYTES = 256 * 2**20


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


def matmul_rate(rows: int, k: int = K, n: int = N, repeats: int = 9) -> float:
    """FLOP/s of an fp32 `linear` with `rows` input rows: 2*rows*k*n / median time."""
    import torch
    import torch.nn.functional as F

    gen = torch.Generator().manual_seed(0)
    x, w = torch.randn(rows, k, generator=gen), torch.randn(n, k, generator=gen)
    inner = max(1, 2**22 // (rows * k * n // 1024 + 1))  # repeat tiny GEMMs to ~ms durations
    seconds = median_time(lambda: [F.linear(x, w) for _ in range(inner)], repeats)
    return 2.0 * rows * k * n * inner / seconds


def copy_bandwidth(nbytes: int = COPY_BYTES, repeats: int = 5) -> float:
    """Bytes/s of `dst.copy_(src)` on fp32 tensors of `nbytes`: (read + write) / median time."""
    import torch

    src = torch.ones(nbytes // 4)
    dst = torch.zeros_like(src)
    return 2.0 * nbytes / median_time(lambda: dst.copy_(src), repeats)


def half_rows(flops: float, rate_small: float, rows: int = SMALL_ROWS) -> float:
    """t_half with R(rows) = flops * rows / (rows + t_half) = rate_small."""
    return max(0.0, rows * (flops / rate_small - 1.0))


def physical_memory() -> float:
    try:
        return float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return 24.0 * GiB


def calibrate_cpu(threads: int | None = 1) -> Accelerator:
    """Measure this machine (a few seconds) and return the `cpu` profile built from it."""
    with num_threads(threads):
        flops = matmul_rate(ROWS)
        small = matmul_rate(SMALL_ROWS)
        bandwidth = copy_bandwidth()
    return accelerator_from_measurements("cpu", flops, bandwidth, physical_memory(),
                                         gemm_half_rows=half_rows(flops, small))
