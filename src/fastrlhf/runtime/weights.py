"""Weight sync: a policy version packed into checksummed buckets, verified and swapped in atomically.

The trainer's rank 0 packs the policy's weights — cast to the rollout dtype — into flat byte buckets
of at most `bucket_mb` MB (`pack`); each bucket lists its tensors (name, dtype, shape, byte range)
and a CRC-32 of every tensor's bytes. The buckets travel through Ray's object store (put once,
read by every rollout worker: zero-copy within a node); a receiver (`WeightReceiver.load`) checks
the version, then every tensor's name, shape, dtype and CRC *before* it copies anything into the
engine's model, so a corrupt or mismatched bucket is an error naming the tensor and the model keeps
the previous version whole. The model's version is `None` while the copy runs (a failure there
leaves a worker that refuses to generate, never one with a mix of two versions).

Why CRC-32 (zlib) and not SHA-256: it runs at memory speed (the check is against transport faults
and bugs, not adversaries); the checkpoint files keep SHA-256.

Left out: a torch.distributed broadcast transport (NCCL between GPU trainer and GPU rollout
workers); delta sync of changed tensors only.
"""

from __future__ import annotations

import time
import zlib
from dataclasses import dataclass, field

import numpy as np
import torch



class WeightSyncError(RuntimeError):
    """A received version does not match what was sent (checksum, name, shape) or what was expected."""


@dataclass
class TensorEntry:
    name: str
    dtype: str  # torch dtype name, e.g. "float32", "bfloat16"
    shape: tuple[int, ...]
    offset: int  # byte range [offset, offset + nbytes) in the bucket
    nbytes: int
    crc32: int


@dataclass
class Bucket:
    """One flat byte buffer (a numpy uint8 array: zero-copy in Ray's object store) and its manifest."""

    version: int
    entries: list[TensorEntry] = field(default_factory=list)
    data: np.ndarray | None = None


def _bytes_of(tensor: torch.Tensor) -> np.ndarray:
    """The tensor's bytes as a uint8 numpy array (bf16 has no numpy dtype: go through uint8)."""
    flat = tensor.detach().contiguous().reshape(-1)
    return flat.view(torch.uint8).cpu().numpy()


def pack(state: dict[str, torch.Tensor], version: int, dtype: torch.dtype | None = None,
         bucket_mb: int = 64) -> list[Bucket]:
    """`state` (name → tensor) as buckets of ≤ bucket_mb MB (a larger tensor gets a bucket of its own);
    floating tensors are cast to `dtype` when given (the rollout engine's precision)."""
    limit = bucket_mb * 1024 * 1024
    buckets: list[Bucket] = []
    parts: list[np.ndarray] = []
    current = Bucket(version)
    size = 0
    for name, tensor in state.items():
        if dtype is not None and tensor.is_floating_point():
            tensor = tensor.to(dtype)
        raw = _bytes_of(tensor)
        if size and size + raw.nbytes > limit:
            current.data = np.concatenate(parts)
            buckets.append(current)
            current, parts, size = Bucket(version), [], 0
        current.entries.append(TensorEntry(name, str(tensor.dtype).removeprefix("torch."), tuple(tensor.shape), size, raw.nbytes,
                                           zlib.crc32(raw)))
        parts.append(raw)
        size += raw.nbytes
    if parts or not buckets:
        current.data = np.concatenate(parts) if parts else np.zeros(0, np.uint8)
        buckets.append(current)
    return buckets


def bucket_bytes(buckets: list[Bucket]) -> int:
    return sum(int(b.data.nbytes) for b in buckets)


def publish(state: dict[str, torch.Tensor], version: int, dtype: torch.dtype | None = None,
            bucket_mb: int = 64) -> tuple[int, list, int, float]:
    """Version `version` of `state` into Ray's object store → (version, bucket refs, bytes, seconds).

    The buckets are copies (`pack` concatenates each tensor's bytes) and an object is immutable once
    put, so what a rollout worker later loads is the weights as they were at this call — a snapshot,
    whatever the trainer does to its tensors afterwards."""
    import ray

    started = time.perf_counter()
    buckets = pack(state, version, dtype, bucket_mb)
    return version, [ray.put(b) for b in buckets], bucket_bytes(buckets), time.perf_counter() - started


def unpack(buckets: list[Bucket], version: int, expected: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Every tensor of `buckets` as a CPU tensor, after checking the version, that the names are
    exactly `expected`'s, each shape and CRC; raises WeightSyncError naming the first bad tensor."""
    tensors: dict[str, torch.Tensor] = {}
    for bucket in buckets:
        if bucket.version != version:
            raise WeightSyncError(f"weight sync: a bucket of version {bucket.version} arrived for version {version}")
        for e in bucket.entries:
            raw = bucket.data[e.offset:e.offset + e.nbytes]
            if raw.nbytes != e.nbytes or zlib.crc32(raw) != e.crc32:
                raise WeightSyncError(f"weight sync: checksum mismatch in tensor {e.name!r} of version {version}")
            target = expected.get(e.name)
            if target is None:
                raise WeightSyncError(f"weight sync: tensor {e.name!r} is not in the rollout model")
            if tuple(target.shape) != e.shape:
                raise WeightSyncError(f"weight sync: tensor {e.name!r} has shape {list(e.shape)}, the rollout model "
                                      f"expects {list(target.shape)}")
            dtype = getattr(torch, e.dtype)
            tensors[e.name] = torch.frombuffer(bytearray(raw), dtype=torch.uint8).view(dtype).reshape(e.shape)
    missing = sorted(set(expected) - set(tensors))
    if missing:
        raise WeightSyncError(f"weight sync: version {version} lacks tensor(s) {missing[:3]}")
    return tensors


class WeightReceiver:
    """The rollout side: holds the engine's model and the version in it."""

    def __init__(self, model: torch.nn.Module, version: int | None = None):
        self.model, self.version = model, version

    def load(self, buckets: list[Bucket], version: int) -> None:
        """Verify all of version `version`, then copy it into the model; the version is set last."""
        expected = dict(self.model.state_dict())
        tensors = unpack(buckets, version, expected)  # raises before anything is touched
        self.version = None  # mid-copy: generating now would mix two versions
        with torch.no_grad():
            for name, target in expected.items():
                target.copy_(tensors[name].to(target.device, target.dtype))
        self.version = version
