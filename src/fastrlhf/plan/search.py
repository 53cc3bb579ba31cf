"""Plan search: simulated annealing (ReaLHF's MCMC walk) and exact enumeration.

State: one (mesh, layout) per call, drawn from that call's candidates (every aligned mesh x every
valid layout, pruned by `Evaluator.fits_alone`). Objective: simulated iteration time; a plan over
memory has infinite cost and is never accepted (memory is a hard constraint).
Moves: a random candidate for one call; a new layout on the same mesh; a neighbouring mesh
(shifted by one block, or the next size up / down at the same start) with a random layout; copying another call's placement (co-location); swapping two calls'
placements; splitting one call's mesh in halves between it and another call (un-co-location);
random candidates for two calls at once. Metropolis acceptance exp(-(E' - E) / T).
The walk runs in *cycles*: in each, T decays geometrically from 0.2 E0 to 1e-4 E0 (E0 = the best
time when the cycle starts) and the chain restarts from the best plan at each quarter; a cycle
ends with a coordinate-descent polish that tries every candidate of every call with the others
fixed until nothing improves, so the result is at least a local optimum in the one-call
neighbourhood. A cycle that improved the best is followed by one twice as long; a cycle (with
its polish) that did not improve it ends the search: *converged*. A cycle that would outlast the
time budget is compressed to cool by the deadline. Seeded by `random.Random(seed)`; also stops at
`max_steps` (the tests' one-cycle mode: `cycle_steps=None`) or `time_limit` seconds.

`search` picks the method: when the full product of candidates is small enough to enumerate in
the budget at the measured speed of the objective, `exhaustive` (the optimum, provably);
otherwise annealing whose first cycle has max(CYCLE_STEPS, CYCLE_PER_CANDIDATE x all candidates)
steps, so that a random-candidate move can try each candidate several times before the search may
declare convergence (with 10k-step first cycles the 64- and 128-GPU PPO plans converged after
7-16 s at 5-9 % slower plans than a full 50 s run). Either way the result says how long it took
and why it stopped.
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


EXHAUSTIVE_MAX_PLANS = 200_000  # memoised plans stay < ~100 MB
EXHAUSTIVE_BUDGET_SHARE = 0.5  # enumerate only if the estimate takes at most this share of the budget
CYCLE_STEPS = 10_000  # first annealing cycle of `search` (at least); each improving cycle doubles it
CYCLE_PER_CANDIDATE = 20  # ... and at least this many steps per candidate of all calls


@dataclass
class SearchResult:
    placements: tuple | None
    iteration_time: float
    seconds: float
    evaluations: int
    seconds_to_best: float = 0.0  # when the returned plan was first reached
    stop_reason: str = ""  # "exhaustive", "converged", "time limit", "max steps"
    detail: str = ""  # one line for people: what was searched, why it stopped


def n_plans(cands: list[list[tuple]]) -> int:
    return math.prod(len(c) for c in cands)


def exhaustive(obj: Objective, cands: list[list[tuple]], deadline: float = INF) -> SearchResult:
    """Every plan of the candidate product; stops early (reason "time limit") at `deadline`."""
    t0 = time.perf_counter()
    best, best_e, found_at, seen = None, INF, t0, 0
    reason = "exhaustive"
    for placements in itertools.product(*cands):
        if seen % 256 == 0 and time.perf_counter() > deadline:
            reason = "time limit"
            break
        seen += 1
        e = obj(placements)
        if e < best_e:
            best, best_e, found_at = placements, e, time.perf_counter()
    detail = f"all {seen} plans enumerated" if reason == "exhaustive" else \
        f"enumeration cut at the time limit after {seen} of {n_plans(cands)} plans"
    return SearchResult(best, best_e, time.perf_counter() - t0, obj.evaluations, found_at - t0,
                        reason, detail)


def search(obj: Objective, cands: list[list[tuple]], inits: list[tuple], seconds_per_eval: float,
           seed: int = 0, max_steps: int = 2_000_000, time_limit: float = 60.0) -> SearchResult:
    """Exhaustive enumeration when it fits the budget, else annealing until it converges."""
    total = n_plans(cands)
    if total <= EXHAUSTIVE_MAX_PLANS and total * seconds_per_eval <= EXHAUSTIVE_BUDGET_SHARE * time_limit:
        result = exhaustive(obj, cands, deadline=time.perf_counter() + time_limit)
        if result.stop_reason == "exhaustive":
            return result
    cycle = max(CYCLE_STEPS, CYCLE_PER_CANDIDATE * sum(len(c) for c in cands))
    return anneal(obj, cands, inits, seed, max_steps, time_limit, cycle_steps=cycle)


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
           max_steps: int = 20000, time_limit: float = 60.0,
           cycle_steps: int | None = None) -> SearchResult:
    """Simulated annealing from the best of `inits` in polished cycles (module docstring).

    `cycle_steps=None`: one cycle of `max_steps` steps, then the polish. Otherwise the first cycle
    has `cycle_steps` steps and each cycle that improved the best is followed by one twice as long,
    until a cycle does not improve it (converged), `max_steps` or the time limit."""
    t0 = time.perf_counter()
    deadline, anneal_deadline = t0 + time_limit, t0 + 0.8 * time_limit
    rng = random.Random(seed)
    moves = _Moves(cands, rng)
    start = min(inits, key=obj)
    best, best_e = start, obj(start)
    if best_e == INF:
        return SearchResult(None, INF, time.perf_counter() - t0, obj.evaluations, 0.0,
                            "infeasible", "no feasible starting plan")
    found_at, steps, cycles = time.perf_counter(), 0, 0
    length = cycle_steps or max_steps
    while True:
        cycles += 1
        cycle_e = best_e
        cur, cur_e = best, best_e
        t_hi, t_lo = 0.2 * best_e, 1e-4 * best_e
        c0 = time.perf_counter()
        for step in range(length):
            now = time.perf_counter()
            frac = max(step / length, (now - c0) / max(anneal_deadline - c0, 1e-9))
            if frac >= 1.0 or steps >= max_steps:
                break
            if step and step % max(1, length // 4) == 0:
                cur, cur_e = best, best_e
            steps += 1
            temp = t_hi * (t_lo / t_hi) ** frac
            new = moves.propose(cur)
            e = obj(new)
            if e == INF:
                continue
            if e <= cur_e or rng.random() < math.exp(-(e - cur_e) / temp):
                cur, cur_e = new, e
                if e < best_e:
                    best, best_e, found_at = new, e, time.perf_counter()
        polished, polished_e = polish(obj, cands, best, deadline=deadline)
        if polished_e < best_e:
            best, best_e, found_at = polished, polished_e, time.perf_counter()
        now = time.perf_counter()
        if now >= anneal_deadline:
            reason = "time limit"
        elif steps >= max_steps:
            reason = "max steps"
        elif cycle_steps is None:
            reason = "max steps"
        elif best_e >= cycle_e:
            reason = "converged"
        else:
            length *= 2
            continue
        break
    detail = (f"{cycles} annealing cycle(s), {steps} steps; " + {
        "converged": f"the last cycle ({length} steps + polish) did not improve the best",
        "time limit": "stopped at the time limit",
        "max steps": "stopped at max_steps"}[reason])
    return SearchResult(best, best_e, time.perf_counter() - t0, obj.evaluations, found_at - t0,
                        reason, detail)


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
