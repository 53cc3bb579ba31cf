"""Plan -> augmented plan: derived micro-batches, offload, reallocation and transfer steps.

Memory placement rule (ReaLHF sec. 4): a trained model lives on its *home* -- the mesh and layout
of its train call -- with weights, gradients and optimizer state; a frozen model lives on the mesh
of its first call. Any other call of the model on a different mesh/layout gets a transient copy
through a reallocation step (from the home, after the previous iteration's train call), freed
after the call. Frozen models are resident unless offloaded; an offloaded one is reloaded from
host memory before each call. Per GPU:
    peak = sum of resident homes on the GPU + max over calls on it of (transient copy + activations
    or KV cache of the call)
and every GPU's peak must stay within the usable memory (a hard constraint).

Derived per call, given the memory left on its mesh: training / inference pick the number of
micro-batches (power of two, <= sequences per DP rank) with the smallest time that fits; generation
picks the largest decode batch whose KV cache fits. Offload is greedy: while some call does not
fit, offload the largest frozen model resident on its mesh.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from fastrlhf.plan import cost, memory
from fastrlhf.plan.graphs import TRAINABLE_ROLES, ModelCall, dependencies
from fastrlhf.plan.hardware import Cluster
from fastrlhf.plan.layout import Layout, Mesh, dp_spans_nodes
from fastrlhf.plan.model_spec import ModelSpec
from fastrlhf.plan.plan import Workload

MICRO_CHOICES = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
Placement = tuple  # (Mesh, Layout)


@dataclass(frozen=True)
class CallEstimate:
    index: int
    n_micro: int  # micro-batches (train / inference); 0 for generate
    decode_batch: int  # sequences decoded together per DP rank (generate); 0 otherwise
    time: float
    memory: float  # peak bytes per GPU on the call's mesh while it runs


@dataclass(frozen=True)
class Step:
    kind: str  # "realloc" | "reload" | "transfer"
    consumer: int  # call index the step feeds
    producer: int  # call index it comes from (home call / producing call), -1 for reload
    src: Mesh | None
    dst: Mesh
    time: float


@dataclass
class Evaluation:
    feasible: bool
    reason: str = ""
    calls: list[CallEstimate] | None = None
    steps: list[Step] | None = None
    offloaded: tuple[str, ...] = ()
    gpu_peak: list[float] | None = None


def _mesh_max(homes: list[tuple[Mesh, float]], mesh: Mesh) -> float:
    """Largest sum of resident bytes on one GPU of `mesh`. The sum is piecewise constant in the
    GPU id and rises only where a home mesh starts, so checking those points suffices."""
    lo, hi = mesh.start, mesh.start + mesh.size
    points = {lo} | {m.start for m, _ in homes if lo < m.start < hi}
    return max(sum(b for m, b in homes if m.start <= p < m.start + m.size) for p in points)


def balanced_decode_batch(sequences: int, largest: int) -> int:
    """The fastest decode batch for `sequences` per DP rank when at most `largest` fit: the
    fewest waves, ceil(sequences / largest), of equal size. A decode step costs max(weight read,
    GEMM compute) plus KV reads, so at a fixed number of waves unequal waves only add (a full
    compute-bound wave and a small memory-bound one cost more than two equal memory-bound ones),
    and with equal waves the total never falls as waves are added (cost.generate_time)."""
    waves = math.ceil(sequences / largest)
    return math.ceil(sequences / waves)


class Evaluator:
    """Evaluates placements of one graph on one cluster; caches per-call costs."""

    def __init__(self, calls: tuple[ModelCall, ...], models: dict[str, ModelSpec],
                 cluster: Cluster, workload: Workload):
        self.calls, self.models, self.cluster, self.workload = calls, models, cluster, workload
        self.acc = cluster.accelerator
        self.deps = dependencies(calls)
        self.home = {}
        for idx, call in enumerate(calls):
            if call.kind == "train" or call.role not in self.home:
                self.home[call.role] = idx
        self._cache: dict = {}

    def trainable(self, role: str) -> bool:
        return role in TRAINABLE_ROLES and self.calls[self.home[role]].kind == "train"

    def evaluate(self, placements: tuple[Placement, ...], fixed: tuple[int, ...] | None = None,
                 detail: bool = True) -> Evaluation:
        """`fixed`: per call n_micro / decode_batch to use (0 = derive); `detail`: also compute
        the per-GPU peak (the search skips it)."""
        offloaded: set[str] = set()
        while True:
            homes = self._homes(placements, offloaded)
            estimates, failing = [], []
            for idx in range(len(self.calls)):
                base = _mesh_max(homes, placements[idx][0])
                est = self._estimate(idx, placements, base, offloaded, fixed)
                (failing.append(idx) if est is None else estimates.append(est))
            if not failing:
                break
            role = self._offload_candidate(placements, offloaded, failing)
            if role is None:
                name = self.calls[failing[0]].name
                return Evaluation(False, f"{name} does not fit in memory")
            offloaded.add(role)
        peak = self._gpu_peak(homes, estimates, placements) if detail else None
        steps = self._steps(placements, offloaded)
        return Evaluation(True, "", estimates, steps, tuple(sorted(offloaded)), peak)

    # -- memory ---------------------------------------------------------------------------
    def _home_bytes(self, role: str, layout: Layout) -> float:
        model = self.models[role]
        if self.trainable(role):
            return memory.train_state_bytes(model, layout, self.workload.zero_stage)
        return memory.weight_bytes(model, layout)

    def _homes(self, placements, offloaded) -> list[tuple[Mesh, float]]:
        """(mesh, bytes per GPU) of every resident model."""
        return [(placements[idx][0], self._home_bytes(role, placements[idx][1]))
                for role, idx in self.home.items() if role not in offloaded]

    def _gpu_peak(self, homes, estimates, placements) -> list[float]:
        persistent = [0.0] * self.cluster.n_gpus
        for mesh, nbytes in homes:
            for g in mesh.gpus:
                persistent[g] += nbytes
        peak = list(persistent)
        for est in estimates:
            mesh = placements[est.index][0]
            extra = est.memory - _mesh_max(homes, mesh)
            for g in mesh.gpus:
                peak[g] = max(peak[g], persistent[g] + extra)
        return peak

    def _copy_bytes(self, idx: int, placements, offloaded) -> float:
        role = self.calls[idx].role
        if role in offloaded or placements[idx] != placements[self.home[role]]:
            return memory.weight_bytes(self.models[role], placements[idx][1])
        return 0.0

    def _offload_candidate(self, placements, offloaded, failing) -> str | None:
        best, best_bytes = None, 0.0
        for role, idx in self.home.items():
            if self.trainable(role) or role in offloaded:
                continue
            mesh, layout = placements[idx]
            if any(mesh.overlaps(placements[f][0]) for f in failing):
                nbytes = self._home_bytes(role, layout)
                if nbytes > best_bytes:
                    best, best_bytes = role, nbytes
        return best

    # -- per-call choice of micro-batches / decode batch --------------------------------------
    def _estimate(self, idx, placements, base, offloaded, fixed) -> CallEstimate | None:
        mesh, layout = placements[idx]
        base += self._copy_bytes(idx, placements, offloaded)
        free = self.acc.memory_budget - base
        want = fixed[idx] if fixed else 0
        if self.calls[idx].kind == "generate":
            return self._estimate_generate(idx, mesh, layout, base, free, want)
        if want:
            time, need = self._call_cost(idx, mesh, layout, want)
            return CallEstimate(idx, want, 0, time, base + need) if need <= free else None
        for time, need, n_micro in self._options(idx, mesh, layout):
            if need <= free:  # options are sorted by time: the first that fits is the fastest
                return CallEstimate(idx, n_micro, 0, time, base + need)
        return None

    def _options(self, idx, mesh, layout) -> list[tuple[float, float, int]]:
        key = ("options", idx, mesh, layout)
        if key not in self._cache:
            self._cache[key] = sorted((*self._call_cost(idx, mesh, layout, m), m)
                                      for m in self._micro_options(layout))
        return self._cache[key]

    def _micro_options(self, layout: Layout) -> list[int]:
        b = cost.per_rank(self.workload.batch, layout)
        return [m for m in MICRO_CHOICES if m <= b]

    def _call_cost(self, idx, mesh, layout, n_micro) -> tuple[float, float]:
        single = mesh.single_node(self.cluster.gpus_per_node)
        dp_intra = not dp_spans_nodes(mesh, layout, self.cluster.gpus_per_node)
        key = (idx, layout, n_micro, single, dp_intra)
        if key not in self._cache:
            self._cache[key] = self._compute_cost(idx, layout, n_micro, single, dp_intra)
        return self._cache[key]

    def _compute_cost(self, idx, layout, n_micro, single, dp_intra) -> tuple[float, float]:
        call, w = self.calls[idx], self.workload
        model = self.models[call.role]
        tokens_mb = cost.per_rank(w.batch, layout) * w.seq_len / n_micro
        if call.kind == "train":
            time = cost.train_time(model, self.acc, layout, w.batch, w.seq_len, n_micro, single,
                                   dp_intra, w.zero_stage)
            return time, memory.train_act_bytes(model, layout, tokens_mb, n_micro)
        time = cost.inference_time(model, self.acc, layout, w.batch, w.seq_len, n_micro, single)
        return time, memory.forward_act_bytes(model, layout, tokens_mb)

    def _estimate_generate(self, idx, mesh, layout, base, free, want) -> CallEstimate | None:
        b, prefill, per_seq = self._generate_memory(idx, layout)
        free -= prefill
        fits = int(free // per_seq) if free > 0 else 0
        batch = min(b, want) if want else min(b, fits)
        if batch < 1 or batch > fits:
            return None
        if not want:  # the fewest waves that fit, balanced (see balanced_decode_batch)
            batch = balanced_decode_batch(b, batch)
        single = mesh.single_node(self.cluster.gpus_per_node)
        key = (idx, layout, batch, single)
        if key not in self._cache:
            w, model = self.workload, self.models[self.calls[idx].role]
            self._cache[key] = cost.generate_time(model, self.acc, layout, w.batch, w.prompt_len,
                                                  w.gen_len, batch, single)
        return CallEstimate(idx, 0, batch, self._cache[key], base + prefill + batch * per_seq)

    def _generate_memory(self, idx, layout) -> tuple[int, float, float]:
        """(sequences per DP rank, prefill activation bytes, KV bytes per sequence)."""
        key = ("gen", idx, layout)
        if key not in self._cache:
            w, model = self.workload, self.models[self.calls[idx].role]
            b = cost.per_rank(w.batch, layout)
            self._cache[key] = (b, memory.prefill_act_bytes(model, layout, b * w.prompt_len),
                                memory.kv_bytes_per_seq(model, layout, w.seq_len))
        return self._cache[key]

    # -- augmented steps ------------------------------------------------------------------
    def _steps(self, placements, offloaded) -> list[Step]:
        steps, gpn = [], self.cluster.gpus_per_node
        for idx, call in enumerate(self.calls):
            home = self.home[call.role]
            mesh, layout = placements[idx]
            model = self.models[call.role]
            if call.role in offloaded:
                steps.append(Step("reload", idx, -1, None, mesh,
                                  cost.reload_time(model, self.acc, layout)))
            elif idx != home and placements[idx] != placements[home]:
                src = placements[home][0]
                intra = src.single_node(gpn) and mesh.single_node(gpn) and src.start // gpn == mesh.start // gpn
                steps.append(Step("realloc", idx, home, src, mesh,
                                  cost.realloc_time(model, self.acc, layout, intra)))
            for dep in self.deps[idx]:
                steps += self._transfer(dep, idx, placements)
        return steps

    def _transfer(self, producer: int, consumer: int, placements) -> list[Step]:
        src, dst = placements[producer][0], placements[consumer][0]
        if src == dst:
            return []
        keys = set(self.calls[producer].outputs) & set(self.calls[consumer].inputs)
        nbytes = self.workload.batch * self.workload.seq_len * 4 * len(keys)
        gpn = self.cluster.gpus_per_node
        intra = src.single_node(gpn) and dst.single_node(gpn) and src.start // gpn == dst.start // gpn
        return [Step("transfer", consumer, producer, src, dst,
                     cost.transfer_time(nbytes, src, dst, self.acc, intra))]

    def fits_alone(self, idx: int, mesh: Mesh, layout: Layout) -> bool:
        """Necessary condition used to prune candidates: the call fits with nothing else on its
        GPUs (its model's weights are on the GPU in any plan; a train call also holds states)."""
        call, w = self.calls[idx], self.workload
        model = self.models[call.role]
        if call.kind == "train":
            base = memory.train_state_bytes(model, layout, w.zero_stage)
        else:
            base = memory.weight_bytes(model, layout)
        free = self.acc.memory_budget - base
        if call.kind == "generate":
            b = cost.per_rank(w.batch, layout)
            need = memory.prefill_act_bytes(model, layout, b * w.prompt_len)
            return need + memory.kv_bytes_per_seq(model, layout, w.seq_len) <= free
        return any(self._call_cost(idx, mesh, layout, m)[1] <= free
                   for m in self._micro_options(layout))
