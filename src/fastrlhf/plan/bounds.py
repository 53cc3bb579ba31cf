"""Lower bounds on the steady-state iteration time of *any* plan, under the cost model.

Used to judge how much a search can still gain over a heuristic: if the per-call heuristic is
already within x% of the bound, no plan (searched or not) is more than x% faster.

Per call i, over its candidates (mesh, layout) with the call *alone* on its GPUs (only its own
weights, or its training state for a train call; so its micro-batches / decode batch are the
largest any plan could give it):
    t_min(i)  = min time,   a_min(i) = min accelerator-seconds (time x mesh size).
Two bounds, both valid for every feasible plan of the steady state (reallocation, reload and
transfer steps only add time, so they are left out):
- work:  the GPUs must do every call once per iteration:  T >= sum_i a_min(i) / N.
- chain: a trained model's calls of one iteration depend on its previous train call (its
  weights) and its train call depends on them, so the period is at least the longest dependency
  path from the model's first call to its train call, with t_min on every call of the path:
  T >= max over trained roles of longest_path(first call -> train call).
The bound is the larger of the two. Left out: contention between calls (the bound assumes
perfect packing), memory held by other models (it can only slow a call down).
"""

from __future__ import annotations

from dataclasses import dataclass

from fastrlhf.plan import memory
from fastrlhf.plan.evaluate import Evaluator
from fastrlhf.plan.search import INF


@dataclass
class Bound:
    t_min: list[float]  # per call, seconds
    a_min: list[float]  # per call, accelerator-seconds
    work: float
    chain: float

    @property
    def value(self) -> float:
        return max(self.work, self.chain)


def call_alone(ev: Evaluator, idx: int, mesh, layout) -> float:
    """Time of call `idx` on (mesh, layout) with nothing else on its GPUs (inf if it does not fit)."""
    call, model = ev.calls[idx], ev.models[ev.calls[idx].role]
    if call.kind == "train":
        base = memory.train_state_bytes(model, layout, ev.workload.zero_stage)
    else:
        base = memory.weight_bytes(model, layout)
    placements = tuple((mesh, layout) for _ in ev.calls)  # own placement = home: no copy
    est = ev._estimate(idx, placements, base, set(), None)
    return INF if est is None else est.time


def lower_bound(ev: Evaluator, cands: list[list[tuple]]) -> Bound:
    t_min, a_min = [], []
    for idx, cs in enumerate(cands):
        times = [(call_alone(ev, idx, m, lay), m.size) for m, lay in cs]
        t_min.append(min(t for t, _ in times))
        a_min.append(min(t * size for t, size in times))
    work = sum(a_min) / ev.cluster.n_gpus
    chain = 0.0
    for role, home in ev.home.items():
        if not ev.trainable(role):
            continue
        first = min(i for i, c in enumerate(ev.calls) if c.role == role)
        longest = [-INF] * len(ev.calls)  # longest path from `first` to each call (topological)
        longest[first] = t_min[first]
        for i in range(first + 1, home + 1):
            preds = [longest[d] for d in ev.deps[i] if longest[d] > -INF]
            if preds:
                longest[i] = max(preds) + t_min[i]
        chain = max(chain, longest[home])
    return Bound(t_min, a_min, work, chain)
