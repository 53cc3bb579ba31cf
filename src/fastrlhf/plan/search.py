"""Plan search: simulated annealing (ReaLHF's MCMC walk) and exact enumeration.

State: one (mesh, layout) per call, drawn from that call's candidates (every aligned mesh x every
valid layout, pruned by `Evaluator.fits_alone`). Objective: simulated iteration time; a plan over
memory has infinite cost and is never accepted (memory is a hard constraint).
Moves: a random candidate for one call; a new layout on the same mesh; a neighbouring mesh
(shifted by one block, or the next size up / down at the same start) with a random layout; copying another call's placement (co-location); swapping two calls'
placements; splitting one call's mesh in halves between it and another call (un-co-location);
random candidates for two calls at once. Metropolis acceptance exp(-(E' - E) / T), T decaying
geometrically from 0.2 E0 to 1e-4 E0 over the step / time budget, with the chain restarted from the best plan at
each quarter. A final coordinate-descent polish tries every candidate of every call with the others
fixed until nothing improves, so the result is at least a local optimum in the one-call
neighbourhood. Seeded by `random.Random(seed)`; stops at `max_steps` or `time_limit` seconds.
"""

from __future__ import annotations

import itertools
import math
import random
import time
from dataclasses import dataclass

from fastrlhf.plan.evaluate import Evaluator
from fastrlhf.plan.layout import Mesh, all_layouts, all_meshes
from fastrlhf.plan.simulator import simulate

INF = float("inf")


class Objective:
    """Memoised plan -> simulated iteration time (inf when infeasible)."""

    def __init__(self, ev: Evaluator, n_iters: int = 3):
        self.ev, self.n_iters, self.memo, self.evaluations = ev, n_iters, {}, 0

    def __call__(self, placements: tuple) -> float:
        if placements not in self.memo:
            self.evaluations += 1
            result = self.ev.evaluate(placements, detail=False)
            value = INF
            if result.feasible:
                value = simulate(self.ev, result, placements, self.n_iters).iteration_time
            self.memo[placements] = value
        return self.memo[placements]


def candidates(ev: Evaluator) -> list[list[tuple]]:
    """Per call, every (mesh, layout) that could appear in a feasible plan."""
    meshes = all_meshes(ev.cluster)
    gpn, out = ev.cluster.gpus_per_node, []
    for idx, call in enumerate(ev.calls):
        model = ev.models[call.role]
        cands = [(mesh, layout) for mesh in meshes
                 for layout in all_layouts(mesh, model, gpn, ev.workload.batch)
                 if ev.fits_alone(idx, mesh, layout)]
        out.append(cands)
    return out


@dataclass
class SearchResult:
    placements: tuple | None
    iteration_time: float
    seconds: float
    evaluations: int
    seconds_to_best: float = 0.0  # when the returned plan was first reached


def exhaustive(obj: Objective, cands: list[list[tuple]]) -> SearchResult:
    t0 = time.perf_counter()
    best, best_e = None, INF
    for placements in itertools.product(*cands):
        e = obj(placements)
        if e < best_e:
            best, best_e = placements, e
    return SearchResult(best, best_e, time.perf_counter() - t0, obj.evaluations)


class _Moves:
    def __init__(self, cands: list[list[tuple]], rng: random.Random):
        self.cands, self.rng = cands, rng
        self.sets = [set(c) for c in cands]
        self.by_mesh = [{} for _ in cands]
        for i, cs in enumerate(cands):
            for mesh, layout in cs:
                self.by_mesh[i].setdefault(mesh, []).append(layout)
        self.n_gpus = max(m.start + m.size for cs in cands for m, _ in cs)
        self.near = _near_meshes({m for cs in cands for m, _ in cs})

    def propose(self, cur: tuple) -> tuple:
        rng, n = self.rng, len(cur)
        i, j = rng.randrange(n), rng.randrange(n)
        new = list(cur)
        r = rng.random()
        if r < 0.25:
            new[i] = rng.choice(self.cands[i])
        elif r < 0.45:
            new[i] = (cur[i][0], rng.choice(self.by_mesh[i].get(cur[i][0], [cur[i][1]])))
        elif r < 0.55:
            mesh = rng.choice(self.near.get(cur[i][0]) or [cur[i][0]])
            new[i] = (mesh, rng.choice(self.by_mesh[i].get(mesh, [cur[i][1]])))
        elif r < 0.65:
            new[i] = cur[j]
        elif r < 0.75:
            new[i], new[j] = cur[j], cur[i]
        elif r < 0.9:
            new[i], new[j] = self._split(cur[i][0], i, j)
        else:
            new[i], new[j] = rng.choice(self.cands[i]), rng.choice(self.cands[j])
        if any(new[k] not in self.sets[k] for k in (i, j)):
            return cur
        return tuple(new)

    def _split(self, mesh: Mesh, i: int, j: int) -> tuple:
        """Calls i and j on the two halves of i's mesh (random layouts): un-co-location."""
        half = mesh.size // 2
        if half < 1 or i == j:
            return None, None
        a, b = Mesh(mesh.start, half), Mesh(mesh.start + half, half)
        if self.rng.random() < 0.5:
            a, b = b, a
        if a not in self.by_mesh[i] or b not in self.by_mesh[j]:
            return None, None
        return (a, self.rng.choice(self.by_mesh[i][a])), (b, self.rng.choice(self.by_mesh[j][b]))


def _near_meshes(meshes: set) -> dict:
    """Per mesh: the meshes one step away -- same size shifted by one block, or same start with
    the next smaller / larger size."""
    sizes = sorted({m.size for m in meshes})
    near = {}
    for m in meshes:
        k = sizes.index(m.size)
        resized = [Mesh(m.start, s) for s in sizes[max(0, k - 1):k + 2] if s != m.size]
        shifted = [Mesh(m.start + d, m.size) for d in (-m.size, m.size)]
        near[m] = [x for x in resized + shifted if x in meshes]
    return near


def anneal(obj: Objective, cands: list[list[tuple]], inits: list[tuple], seed: int = 0,
           max_steps: int = 20000, time_limit: float = 60.0) -> SearchResult:
    """Simulated annealing from the best of `inits`, then coordinate-descent polish."""
    t0 = time.perf_counter()
    rng = random.Random(seed)
    moves = _Moves(cands, rng)
    start = min(inits, key=obj)
    best, best_e = start, obj(start)
    if best_e == INF:
        return SearchResult(None, INF, time.perf_counter() - t0, obj.evaluations)
    cur, cur_e, found_at = best, best_e, time.perf_counter()
    t_hi, t_lo = 0.2 * best_e, 1e-4 * best_e
    budget = 0.8 * time_limit
    for step in range(max_steps):
        frac = max(step / max_steps, (time.perf_counter() - t0) / budget)
        if frac >= 1.0:
            break
        if step and step % max(1, max_steps // 4) == 0:
            cur, cur_e = best, best_e
        temp = t_hi * (t_lo / t_hi) ** frac
        new = moves.propose(cur)
        e = obj(new)
        if e == INF:
            continue
        if e <= cur_e or rng.random() < math.exp(-(e - cur_e) / temp):
            cur, cur_e = new, e
            if e < best_e:
                best, best_e, found_at = new, e, time.perf_counter()
    polished, polished_e = polish(obj, cands, best, deadline=t0 + time_limit)
    if polished_e < best_e:
        best, best_e, found_at = polished, polished_e, time.perf_counter()
    return SearchResult(best, best_e, time.perf_counter() - t0, obj.evaluations, found_at - t0)


def polish(obj: Objective, cands: list[list[tuple]], plan: tuple, deadline: float) -> tuple:
    """Coordinate descent: best candidate per call with the others fixed, until no change."""
    best, best_e = plan, obj(plan)
    improved = True
    while improved:
        improved = False
        for i in range(len(plan)):
            for cand in cands[i]:
                if time.perf_counter() > deadline:
                    return best, best_e
                trial = best[:i] + (cand,) + best[i + 1:]
                e = obj(trial)
                if e < best_e - 1e-12:
                    best, best_e, improved = trial, e, True
    return best, best_e
