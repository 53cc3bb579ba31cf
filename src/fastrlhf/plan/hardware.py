"""Accelerator and cluster specifications.

An `Accelerator` holds the peak numbers from vendor datasheets plus three efficiency factors that
turn peaks into achievable rates (the cost model multiplies by them; they are assumptions, not
measurements, and are listed per field below). Sources for the peak numbers:

- H100 SXM5: NVIDIA H100 Tensor Core GPU datasheet (2023): BF16 dense 989 TFLOP/s (1979 with
  sparsity), 80 GB HBM3 at 3.35 TB/s, NVLink 900 GB/s total (450 GB/s per direction).
- H200 SXM: NVIDIA H200 datasheet (2024): same compute as H100, 141 GB HBM3e at 4.8 TB/s,
  NVLink 900 GB/s.
- A100 SXM4 40/80 GB: NVIDIA A100 datasheet (2021): BF16 dense 312 TFLOP/s, 1.555 TB/s (40 GB) and
  2.039 TB/s (80 GB), NVLink 600 GB/s total (300 GB/s per direction).
- L40S: NVIDIA L40S datasheet (2023): BF16 dense 362 TFLOP/s (733 with sparsity), 48 GB GDDR6 at
  864 GB/s, no NVLink: PCIe Gen4 x16, 64 GB/s total (32 GB/s per direction).
- Inter-node: DGX H100/H200 have one 400 Gb/s NDR InfiniBand NIC per GPU (50 GB/s per GPU);
  DGX A100 one 200 Gb/s HDR NIC per GPU (25 GB/s); L40S servers are assumed to have one 100 Gb/s
  NIC per GPU (12.5 GB/s) -- an assumption, such servers vary.
- Host link (offload / reload of weights): PCIe Gen5 x16 (64 GB/s per direction) for H100/H200,
  Gen4 x16 (32 GB/s) for A100/L40S.
- Latencies (one collective / transfer start-up): 10 us intra-node, 20 us inter-node, typical
  small-message NCCL all-reduce latencies; an assumption.

The `cpu` profile is a placeholder with plausible laptop numbers; `accelerator_from_measurements`
builds a profile from measured FLOP/s and bandwidth, and `calibrate.calibrate_cpu()` fills it from
a micro-benchmark of this machine (validated against our decoder in `validate.py`).
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass

from fastrlhf.errors import UserError

GB = 1e9
GiB = 2**30
TFLOPS = 1e12


@dataclass(frozen=True)
class Accelerator:
    """One device kind. Rates in bytes/s and FLOP/s, memory in bytes, latencies in seconds."""

    name: str
    peak_flops: float  # dense bf16 tensor-core FLOP/s
    hbm_bytes: float  # device memory
    hbm_bw: float  # device memory bandwidth
    intra_bw: float  # per-GPU, per-direction bandwidth to a GPU in the same node
    inter_bw: float  # per-GPU bandwidth to a GPU in another node
    host_bw: float  # per-GPU host<->device bandwidth (offload / reload)
    intra_latency: float = 10e-6
    inter_latency: float = 20e-6
    flops_eff: float = 0.6  # achievable fraction of peak for large GEMMs (assumption)
    bw_eff: float = 0.8  # achievable fraction of memory bandwidth (assumption)
    link_eff: float = 0.8  # achievable fraction of link bandwidth (assumption)
    memory_eff: float = 0.9  # usable fraction of memory (context, fragmentation; assumption)
    # rows t at which a GEMM reaches half its large-GEMM rate: R(t) = flops * t / (t + this)
    # (cost.gemm_rate). 64 for GPUs is an assumption; the cpu profile measures it (calibrate.py)
    gemm_half_rows: float = 64.0
    # measured t_half by the bytes of weights a pass streams, ((bytes, t_half), ...) in rising
    # bytes; empty = gemm_half_rows at every size (GPU profiles: their weights dwarf the L2 cache).
    # On the cpu the 8-row rate halves between weights that stay in cache and weights that
    # stream from DRAM (calibrate.py), so one t_half cannot fit both a 6 MB and a 90 MB model
    half_rows_by_bytes: tuple[tuple[float, float], ...] = ()
    # fixed time per model invocation (decode step incl. sampling) and per layer per invocation:
    # dispatch / launch overheads. 0 for GPUs (left out there); measured for the cpu profile.
    step_latency: float = 0.0
    layer_latency: float = 0.0
    # bytes/s at which a decode step's attention reads the KV cache; 0 = the memory bandwidth
    # (GPU profiles: a memory-bound attention kernel); measured for the cpu profile, where our
    # engine gathers the cache rows with strided copies before its batched matmuls
    kv_read_bw: float = 0.0
    # sampler time per logit (b * V per decode step) beyond the fixed step cost; 0 for GPUs
    # (sampling is a few fused kernels there, left out), measured for the cpu profile
    logit_time: float = 0.0
    # training loss time per logit (log-softmax forward and backward over b * V logits); 0 for
    # GPUs (a few memory-bound passes, <1% of a LLaMA step there: left out), measured for the cpu
    loss_time: float = 0.0

    def __post_init__(self):  # JSON / YAML give lists; keep the table hashable
        object.__setattr__(self, "half_rows_by_bytes",
                           tuple((float(b), float(t)) for b, t in self.half_rows_by_bytes))

    @property
    def flops(self) -> float:
        return self.peak_flops * self.flops_eff

    @property
    def mem_bw(self) -> float:
        return self.hbm_bw * self.bw_eff

    @property
    def memory_budget(self) -> float:
        return self.hbm_bytes * self.memory_eff

    def link_bw(self, intra: bool) -> float:
        return (self.intra_bw if intra else self.inter_bw) * self.link_eff

    def latency(self, intra: bool) -> float:
        return self.intra_latency if intra else self.inter_latency


ACCELERATORS: dict[str, Accelerator] = {
    "H100": Accelerator("H100", 989 * TFLOPS, 80 * GB, 3.35e12, 450 * GB, 50 * GB, 64 * GB),
    "H200": Accelerator("H200", 989 * TFLOPS, 141 * GB, 4.8e12, 450 * GB, 50 * GB, 64 * GB),
    "A100-80G": Accelerator("A100-80G", 312 * TFLOPS, 80 * GB, 2.039e12, 300 * GB, 25 * GB, 32 * GB),
    "A100-40G": Accelerator("A100-40G", 312 * TFLOPS, 40 * GB, 1.555e12, 300 * GB, 25 * GB, 32 * GB),
    "L40S": Accelerator("L40S", 362 * TFLOPS, 48 * GB, 864 * GB, 32 * GB, 12.5 * GB, 32 * GB),
    # laptop-class CPU "device": ~100 GFLOP/s fp32 GEMM, ~10 GB/s memory, 24 GiB; gloo ~1 GB/s
    # (DESIGN.md, measured at 2 ranks). Efficiencies 1: the numbers are meant to be measured ones.
    "cpu": Accelerator("cpu", 100e9, 24 * GiB, 10 * GB, 1 * GB, 1 * GB, 10 * GB, 50e-6, 50e-6,
                       1.0, 1.0, 1.0, 0.8),
}
ACCELERATORS["A100"] = ACCELERATORS["A100-80G"]


def accelerator_from_measurements(name: str, flops: float, mem_bw: float, memory_bytes: float,
                                  link_bw: float = 1 * GB, latency: float = 50e-6,
                                  gemm_half_rows: float = 64.0, step_latency: float = 0.0,
                                  layer_latency: float = 0.0, logit_time: float = 0.0,
                                  half_rows_by_bytes=(), kv_read_bw: float = 0.0,
                                  loss_time: float = 0.0) -> Accelerator:
    """An accelerator whose rates are *measured* (e.g. the cpu profile): efficiencies are 1."""
    return Accelerator(name, flops, memory_bytes, mem_bw, link_bw, link_bw, mem_bw, latency,
                       latency, 1.0, 1.0, 1.0, 0.8, gemm_half_rows=gemm_half_rows,
                       half_rows_by_bytes=tuple(half_rows_by_bytes), step_latency=step_latency,
                       layer_latency=layer_latency, kv_read_bw=kv_read_bw, logit_time=logit_time,
                       loss_time=loss_time)


def get_accelerator(name: str) -> Accelerator:
    for key, acc in ACCELERATORS.items():
        if key.lower() == name.lower():
            return acc
    raise UserError(f"unknown accelerator {name!r} (known: {', '.join(sorted(ACCELERATORS))})")


@dataclass(frozen=True)
class Cluster:
    """`n_nodes` nodes of `gpus_per_node` identical accelerators; GPU ids are node-major."""

    accelerator: Accelerator
    n_nodes: int
    gpus_per_node: int

    @property
    def n_gpus(self) -> int:
        return self.n_nodes * self.gpus_per_node

    def node_of(self, gpu: int) -> int:
        return gpu // self.gpus_per_node

    def describe(self) -> str:
        return f"{self.n_nodes}x{self.gpus_per_node}x{self.accelerator.name}"

    def to_dict(self) -> dict:
        return {"nodes": self.n_nodes, "gpus_per_node": self.gpus_per_node,
                "accelerator": dataclasses.asdict(self.accelerator)}


def make_cluster(accelerator: Accelerator, n_nodes: int, gpus_per_node: int) -> Cluster:
    if n_nodes < 1 or gpus_per_node < 1:
        raise UserError(f"cluster needs >= 1 node and >= 1 GPU per node, got {n_nodes}x{gpus_per_node}")
    if gpus_per_node & (gpus_per_node - 1):
        raise UserError(f"GPUs per node must be a power of two, got {gpus_per_node}")
    return Cluster(accelerator, n_nodes, gpus_per_node)


_CLUSTER_RE = re.compile(r"^\s*(?:(\d+)\s*x\s*)?(?:(\d+)\s*x\s*)?([A-Za-z][\w.-]*)\s*$")


def parse_cluster(text: str) -> Cluster:
    """`NODESxGPUSxNAME` (`2x8xH100`), `GPUSxNAME` (one node: `4xA100-80G`) or `NAME` (one GPU)."""
    match = _CLUSTER_RE.match(text)
    if not match:
        raise UserError(f"bad cluster string {text!r}: expected e.g. 2x8xH100")
    first, second, name = match.groups()
    if second is not None:
        n_nodes, gpn = int(first), int(second)
    else:
        n_nodes, gpn = 1, int(first) if first is not None else 1
    return make_cluster(get_accelerator(name), n_nodes, gpn)


def cluster_from_dict(data: dict) -> Cluster:
    """YAML / JSON form: `{accelerator: H100 | {name:..., peak_flops:...}, nodes: 2,
    gpus_per_node: 8}`; a mapping accelerator may override any field of a named one."""
    if not isinstance(data, dict):
        raise UserError("cluster spec must be a mapping with accelerator, nodes, gpus_per_node")
    acc = data.get("accelerator")
    try:
        if isinstance(acc, str):
            accelerator = get_accelerator(acc)
        elif isinstance(acc, dict):
            base = ACCELERATORS.get(str(acc.get("name")), ACCELERATORS["H100"])
            # numbers as floats: PyYAML reads 40.0e9 (no exponent sign) as a string
            fields = {k: (v if k in ("name", "half_rows_by_bytes") else float(v))
                      for k, v in acc.items()}
            accelerator = dataclasses.replace(base, **fields)
        else:
            raise UserError("cluster spec: 'accelerator' must be a name or a mapping")
        return make_cluster(accelerator, int(data.get("nodes", 1)), int(data.get("gpus_per_node", 8)))
    except (TypeError, ValueError) as exc:
        raise UserError(f"bad cluster spec: {exc}") from None


def load_cluster(text: str) -> Cluster:
    """A cluster string, or the path of a YAML file holding the mapping form."""
    if text.endswith((".yaml", ".yml", ".json")):
        import yaml  # only needed for files

        try:
            with open(text) as fh:
                data = yaml.safe_load(fh)
        except (OSError, yaml.YAMLError) as exc:
            raise UserError(f"cannot read cluster file {text}: {exc.__class__.__name__}") from None
        return cluster_from_dict(data)
    return parse_cluster(text)
