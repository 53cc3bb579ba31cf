"""Heuristic plans the search is measured against; each is the best of its family.

(a) `symmetric`: every call on the whole cluster with one shared dp x tp x pp (Megatron /
    DeepSpeed-Chat style; no reallocation needed).
(b) `disaggregated`: generation on the first k GPUs, every other call on the remaining ones with
    one shared layout (OpenRLHF style); best over aligned splits k and both layouts. The actor's
    weights are shipped to the generation GPUs each iteration (a reallocation step).
(c) `per_call`: our own heuristic -- start from (a) and give each call, in graph order, its best
    layout on the whole cluster (reallocation between layouts, ReaLHF without mesh splitting).
"""

from __future__ import annotations

from fastrlhf.plan.evaluate import Evaluator
from fastrlhf.plan.layout import Mesh, all_layouts, all_meshes, is_valid_layout
from fastrlhf.plan.search import INF, Objective


def _shared_layouts(ev: Evaluator, mesh: Mesh, indices: list[int]) -> list:
    """Layouts valid on `mesh` for the models of all calls in `indices`."""
    gpn = ev.cluster.gpus_per_node
    first = ev.models[ev.calls[indices[0]].role]
    return [lay for lay in all_layouts(mesh, first, gpn, ev.workload.batch)
            if all(is_valid_layout(lay, mesh, ev.models[ev.calls[i].role], gpn) for i in indices)]


def symmetric(obj: Objective) -> tuple | None:
    ev = obj.ev
    full = Mesh(0, ev.cluster.n_gpus)
    n = len(ev.calls)
    plans = [tuple((full, lay) for _ in range(n)) for lay in _shared_layouts(ev, full, list(range(n)))]
    return _best(obj, plans)


def disaggregated(obj: Objective) -> tuple | None:
    ev = obj.ev
    gens = [i for i, c in enumerate(ev.calls) if c.kind == "generate"]
    rest = [i for i in range(len(ev.calls)) if i not in gens]
    if not gens or not rest:
        return None
    meshes = set(all_meshes(ev.cluster))
    n = ev.cluster.n_gpus
    best, best_e = None, INF
    for k in range(1, n):
        gen_mesh, train_mesh = Mesh(0, k), Mesh(k, n - k)
        if gen_mesh not in meshes or train_mesh not in meshes:
            continue
        gen_lays = _shared_layouts(ev, gen_mesh, gens)
        for train_lay in _shared_layouts(ev, train_mesh, rest):
            for gen_lay in gen_lays:
                plan = [None] * len(ev.calls)
                for i in gens:
                    plan[i] = (gen_mesh, gen_lay)
                for i in rest:
                    plan[i] = (train_mesh, train_lay)
                e = obj(tuple(plan))
                if e < best_e:
                    best, best_e = tuple(plan), e
    return best


def per_call(obj: Objective, start: tuple | None = None) -> tuple | None:
    ev = obj.ev
    plan = start or symmetric(obj)
    if plan is None:
        return None
    full = Mesh(0, ev.cluster.n_gpus)
    for i in range(len(ev.calls)):
        model = ev.models[ev.calls[i].role]
        options = [plan[:i] + ((full, lay),) + plan[i + 1:]
                   for lay in all_layouts(full, model, ev.cluster.gpus_per_node, ev.workload.batch)]
        plan = _best(obj, [plan] + options)
    return plan


def _best(obj: Objective, plans: list) -> tuple | None:
    best, best_e = None, INF
    for plan in plans:
        e = obj(plan)
        if e < best_e:
            best, best_e = plan, e
    return best


def all_baselines(obj: Objective) -> dict[str, tuple | None]:
    sym = symmetric(obj)
    return {"symmetric": sym, "disaggregated": disaggregated(obj), "per_call": per_call(obj, sym)}
