"""Compute precision of a run: `model.dtype = auto | bf16 | fp16 | fp32`.

Mixed precision as every GPU user trains (Micikevicius et al. 2018, with bf16 instead of loss-scaled
fp16 where the hardware has it):
- trained models (actor, critic) keep **fp32 master weights and optimizer state**; their forward
  and backward run under `torch.autocast(dtype)`: matmuls and attention in bf16 / fp16, norms,
  softmax and losses in fp32 (RMSNorm computes in fp32 itself; log-probs are taken in fp32).
- frozen models (reference, reward model) are simply stored in the compute dtype;
- the rollout engine decodes from a **low-precision copy** of the actor (`RolloutCopy`), refreshed
  from the master weights before every generate call — casting 135M weights per decoded token
  under autocast would cost more than the token.
- fp16 training scales the loss (`torch.amp.GradScaler`, dynamic) so small gradients do not flush
  to zero; bf16 has fp32's exponent range and needs none.

`auto` picks bf16 on a CUDA GPU that supports it, and on a CPU only if a bf16 matmul is measured
faster than fp32 there (`cpu_bf16_is_faster`: timed once per CPU model, torch version and thread
count, cached in ~/.cache/fastrlhf/) *and* the model has at least `AUTO_BF16_MIN_PARAMS`
parameters — below that a CPU step is bound by per-operator overhead, not matmuls, and autocast's
casts cost more than bf16 saves (docs/LOG.md has the measurement). Otherwise fp32, whose rollout
and trainer log-probs are equal.

Left out: fp8, per-module precision, keeping master weights on the host (CPU offload).
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import platform
import time
from pathlib import Path

import torch
from torch import nn

from fastrlhf.errors import UserError

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
DTYPE_CHOICES = ("auto", *DTYPES)
AUTO_BF16_MIN_PARAMS = 10_000_000  # auto on CPU: smaller models stay fp32


def dtype_name(dtype: torch.dtype) -> str:
    return {v: k for k, v in DTYPES.items()}[dtype]


class Precision:
    """One run's precision: the compute dtype, autocast for trained models, the fp16 loss scaler."""

    def __init__(self, dtype: torch.dtype, device: torch.device):
        self.dtype, self.device = dtype, torch.device(device)
        self.scaler = torch.amp.GradScaler(self.device.type) if dtype == torch.float16 else None

    @property
    def exact(self) -> bool:
        """fp32: rollout and trainer run the same kernels on the same weights (log-probs equal)."""
        return self.dtype == torch.float32

    @property
    def name(self) -> str:
        return dtype_name(self.dtype)

    def autocast(self):
        """Context for a trained model's forward (and the backward it records); a no-op in fp32."""
        if self.exact:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def backward(self, loss: torch.Tensor) -> None:
        """loss.backward(), through the fp16 loss scale when there is one (`updates.optimizer_step`
        unscales before clipping)."""
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def frozen(self, model: nn.Module) -> nn.Module:
        """A frozen model (reference, reward model) in the compute dtype."""
        return model.to(self.dtype)


def resolve_precision(name: str, device: torch.device, num_params: int, option: str = "model.dtype") -> Precision:
    """`name` (auto | bf16 | fp16 | fp32) on `device` for a model of `num_params` → `Precision`; a
    clear error for a dtype the device cannot run (bf16 on a GPU without it)."""
    if name not in DTYPE_CHOICES:
        raise UserError(f"{option} must be one of {', '.join(DTYPE_CHOICES)}, got {name!r}")
    device = torch.device(device)
    if name == "auto":
        if device.type == "cuda":
            name = "bf16" if torch.cuda.is_bf16_supported() else "fp32"
        else:
            name = "bf16" if num_params >= AUTO_BF16_MIN_PARAMS and cpu_bf16_is_faster() else "fp32"
    if name == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise UserError(f"{option}=bf16, but this GPU has no bf16 support; use {option}=fp16 or fp32")
    return Precision(DTYPES[name], device)


class RolloutCopy:
    """The rollout engine's low-precision copy of a trained model, refreshed from its master weights.

    `refresh()` copies (and casts) every parameter and buffer in place, so the engine's model object,
    and anything built on it, stays the same. With fp32 there is no copy: `model` is the master."""

    def __init__(self, master: nn.Module, dtype: torch.dtype):
        self.master, self.dtype = master, dtype
        self.model = master if dtype == torch.float32 else copy.deepcopy(master).to(dtype).eval()

    @torch.no_grad()
    def refresh(self) -> None:
        if self.model is self.master:
            return
        for target, source in zip(self.model.state_dict().values(), self.master.state_dict().values()):
            target.copy_(source)


# ---------------------------------------------------------------------------- auto on CPU
CACHE_FILE = "cpu_bf16.json"


def cpu_bf16_is_faster(threads: int | None = None) -> bool:
    """True if a bf16 matmul beats fp32 by ≥ 1.5× on this CPU (measured once, then cached).

    The shape is a transformer block's MLP matmul at a training micro-batch (1024 × 1024 × 2816);
    CPUs with AVX512-BF16 / AMX run it several times faster in bf16, older ones emulate bf16 and are
    slower than fp32. The cache key is the CPU model, torch version and thread count."""
    threads = threads or torch.get_num_threads()
    key = f"{_cpu_model()}|torch {torch.__version__}|{threads} threads"
    cache = _cache_path()
    known = _read_cache(cache)
    if key in known:
        return bool(known[key]["bf16_faster"])
    fp32, bf16 = (_matmul_seconds(dtype) for dtype in (torch.float32, torch.bfloat16))
    faster = bf16 * 1.5 <= fp32
    known[key] = {"bf16_faster": faster, "fp32_s": fp32, "bf16_s": bf16}
    _write_cache(cache, known)
    return faster


def _matmul_seconds(dtype: torch.dtype, repeats: int = 5) -> float:
    a = torch.randn(1024, 1024, dtype=dtype)
    b = torch.randn(1024, 2816, dtype=dtype)
    a @ b  # warm-up (kernel selection)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return best


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _cache_path() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "fastrlhf" / CACHE_FILE


def _read_cache(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _write_cache(path: Path, data: dict) -> None:
    """Best effort: a read-only home only costs a re-measurement next time."""
    from fastrlhf.files import atomic_path

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as temp:
            temp.write_text(json.dumps(data, indent=1))
    except OSError:
        pass
