"""Asynchronous disaggregated plans against the best synchronous plan (Async RLHF, 2410.18252).

For one job (algorithm, models, cluster, workload) and staleness bounds K (default 0, 1, 2):
- *disaggregated* plans: every generate call on GPUs that no other call uses (`is_disaggregated`).
  For each K the best one is searched with the plan search (`search.search`) under the K-stale
  simulation, starting from the OpenRLHF-style split of `baselines.disaggregated`; a plan that
  is not disaggregated scores infinity, so the search stays in the family;
- the *best synchronous plan*: `planner.run_planner` (co-location allowed, K = 0), the plan
  `fastrlhf plan` returns.
Every distinct plan is then simulated at every K with the same number of iterations.

Per plan, from its synchronous (K = 0) simulation with period P0:
    g = time of the generate calls + the reallocation / reload steps that feed them,
    t = P0 - g (the rest of the iteration on the synchronous critical path),
    bound = (g + t) / max(g, t) = P0 / max(g, t),
the speed-up of overlapping the two perfectly (a two-stage pipeline). It bounds the speed-up
only while the rest runs as one serial stage (all other calls on one set of GPUs, as in
`baselines.disaggregated`); when the training side spans several meshes, the scoring and
training calls of successive iterations also overlap and a plan can pass it. The hard floor of
every K is the busiest GPU's seconds of work per iteration (`Simulation.busiest_gpu_seconds`);
on a one-stage disaggregated plan it is max(g, t + reallocation - transfers), as the
reallocation also occupies the training GPUs and a transfer is an edge delay on no GPU.
Left out: what staleness costs in learning (the paper's off-policy degradation for PPO / RLOO,
the importance weights), and the memory of the rollouts and weight versions in flight
(simulator docstring).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from fastrlhf.plan import baselines
from fastrlhf.plan.evaluate import Evaluation, Evaluator
from fastrlhf.plan.graphs import get_graph
from fastrlhf.plan.hardware import Cluster
from fastrlhf.plan.plan import Workload
from fastrlhf.plan.search import INF, Objective, candidates, search
from fastrlhf.plan.simulator import simulate

STALENESS = (0, 1, 2)
MIN_ITERS = 12  # iterations simulated per plan (at least 2K + 4: K + 1 warm-up, K drain)


def iterations_for(max_staleness: int) -> int:
    """Iterations to simulate for bound K: MIN_ITERS, more for large K."""
    return max(MIN_ITERS, 2 * max_staleness + 4)


def is_disaggregated(ev: Evaluator, placements) -> bool:
    """Every generate call's mesh is disjoint from the mesh of every other kind of call."""
    gens = [placements[i][0] for i, c in enumerate(ev.calls) if c.kind == "generate"]
    rest = [placements[i][0] for i, c in enumerate(ev.calls) if c.kind != "generate"]
    return bool(gens) and bool(rest) and not any(g.overlaps(r) for g in gens for r in rest)


class StaleObjective(Objective):
    """`search.Objective` (memoised plan -> iteration time) under the K-stale simulation;
    with `disaggregated_only`, a plan that is not disaggregated costs infinity."""

    def __init__(self, ev: Evaluator, max_staleness: int, n_iters: int,
                 disaggregated_only: bool = False):
        super().__init__(ev, n_iters)
        self.max_staleness, self.disaggregated_only = max_staleness, disaggregated_only

    def __call__(self, placements: tuple) -> float:
        if placements not in self.memo:
            self.evaluations += 1
            self.memo[placements] = self._time(placements)
        return self.memo[placements]

    def _time(self, placements: tuple) -> float:
        if self.disaggregated_only and not is_disaggregated(self.ev, placements):
            return INF
        result = self.ev.evaluate(placements, detail=False)
        if not result.feasible:
            return INF
        return simulate(self.ev, result, placements, self.n_iters,
                        self.max_staleness).iteration_time


def best_disaggregated(ev: Evaluator, max_staleness: int, time_limit: float,
                       seed: int = 0) -> tuple | None:
    """The best disaggregated plan for staleness K found by `search.search` in `time_limit`
    seconds, started from the best of `baselines.disaggregated`'s splits under the same K."""
    obj = StaleObjective(ev, max_staleness, iterations_for(max_staleness), disaggregated_only=True)
    t0 = time.perf_counter()
    start = baselines.disaggregated(obj)
    if start is None or obj(start) == INF:
        return None
    seconds_per_eval = (time.perf_counter() - t0) / max(1, obj.evaluations)
    left = max(1.0, time_limit - (time.perf_counter() - t0))
    found = search(obj, candidates(ev), [start], seconds_per_eval, seed=seed, time_limit=left)
    return found.placements if found.iteration_time < obj(start) else start


def generate_seconds(ev: Evaluator, evaluation: Evaluation) -> float:
    """g: the generate calls plus the reallocation / reload steps that feed them."""
    gens = {i for i, c in enumerate(ev.calls) if c.kind == "generate"}
    calls = sum(e.time for e in evaluation.calls if e.index in gens)
    steps = sum(s.time for s in evaluation.steps if s.kind != "transfer" and s.consumer in gens)
    return calls + steps


@dataclass
class AsyncRow:
    """One plan simulated at one staleness bound."""

    plan_name: str
    placements: tuple
    disaggregated: bool
    max_staleness: int
    iteration_time: float
    sync_iteration_time: float  # P0, the same plan at K = 0
    generate_time: float  # g
    busiest_gpu: float  # seconds of work per iteration on the busiest GPU
    schedule_staleness: int  # K' <= K whose list schedule was the fastest (simulator.simulate)

    @property
    def rest_time(self) -> float:
        """t = P0 - g."""
        return self.sync_iteration_time - self.generate_time

    @property
    def bound(self) -> float:
        """(g + t) / max(g, t): the most overlapping generation with the rest can gain."""
        return self.sync_iteration_time / max(self.generate_time, self.rest_time)


@dataclass
class AsyncComparison:
    rows: list[AsyncRow]
    sync_disaggregated: float  # best disaggregated plan at K = 0
    best_sync: float  # fastest plan at K = 0: the planner's, unless another row beats it
    ev: Evaluator


def simulate_row(ev: Evaluator, name: str, placements, max_staleness: int,
                 n_iters: int) -> AsyncRow:
    """One plan at staleness bound K, with its synchronous period and g for the bound."""
    evaluation = ev.evaluate(placements)
    sim = simulate(ev, evaluation, placements, n_iters, max_staleness)
    sync = sim if max_staleness == 0 else simulate(ev, evaluation, placements, n_iters)
    return AsyncRow(name, placements, is_disaggregated(ev, placements), max_staleness,
                    sim.iteration_time, sync.iteration_time, generate_seconds(ev, evaluation),
                    sim.busiest_gpu_seconds, sim.schedule_staleness)


def best_sync_plan(algo: str, models: dict, cluster: Cluster, workload: Workload,
                   time_limit: float, seed: int = 0) -> tuple:
    """The placements `fastrlhf plan` returns (search + baselines, synchronous, co-location)."""
    from fastrlhf.plan.planner import run_planner

    report = run_planner(algo, models, cluster, workload, seed=seed, time_limit=time_limit)
    return report.plan.placements()


def compare_async(algo: str, models: dict, cluster: Cluster, workload: Workload,
                  staleness: tuple[int, ...] = STALENESS, search_seconds: float = 20.0,
                  seed: int = 0) -> AsyncComparison:
    """Rows for the best synchronous plan and the best disaggregated plan of every K in
    `staleness` (0 must be one), each simulated at every K; see the module docstring."""
    if 0 not in staleness:
        raise ValueError("staleness must include 0 (the synchronous reference)")
    ev = Evaluator(get_graph(algo), models, cluster, workload)
    plans = {"best sync (searched)": best_sync_plan(algo, models, cluster, workload,
                                                    search_seconds, seed)}
    for k in staleness:
        found = best_disaggregated(ev, k, search_seconds, seed)
        if found is not None and found not in plans.values():
            plans[f"disaggregated, best for K={k}"] = found
    n_iters = iterations_for(max(staleness))  # one count for every row, K = 0 included
    rows = [simulate_row(ev, name, p, k, n_iters) for name, p in plans.items() for k in staleness]
    sync = [r for r in rows if r.max_staleness == 0]
    sync_disagg = min((r.iteration_time for r in sync if r.disaggregated), default=INF)
    best_sync = min(r.iteration_time for r in sync)  # the planner's plan, unless a row beats it
    return AsyncComparison(rows, sync_disagg, best_sync, ev)


def describe(ev: Evaluator, placements) -> str:
    """`mesh: call (dp x tp x pp), ...` grouped by mesh, e.g. `0+4: actor.generate (2x2x1)`."""
    by_mesh: dict = {}
    for call, (mesh, layout) in zip(ev.calls, placements):
        by_mesh.setdefault(mesh, []).append(f"{call.name} ({layout.dp}x{layout.tp}x{layout.pp})")
    return "; ".join(f"{m.start}+{m.size}: {', '.join(names)}"
                     for m, names in sorted(by_mesh.items()))
