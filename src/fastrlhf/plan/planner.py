"""Glue: models per role, the search with its baselines, and plan <-> simulation.

`run_planner` spends its time limit on the baselines first, then on the search (`search.search`:
exhaustive enumeration when the candidate product fits the rest of the budget at the speed the
baselines were evaluated, else annealing started from the best baseline until it converges); the
reported search time is the wall time of both, with the reason the search stopped.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from fastrlhf.errors import UserError
from fastrlhf.plan import baselines
from fastrlhf.plan.evaluate import Evaluation, Evaluator
from fastrlhf.plan.graphs import from_calls, get_graph
from fastrlhf.plan.hardware import Cluster
from fastrlhf.plan.model_spec import ModelSpec
from fastrlhf.plan.plan import CallPlan, ExecutionPlan, Workload
from fastrlhf.plan.search import INF, Objective, candidates, search
from fastrlhf.plan.simulator import Simulation, simulate


def build_models(algo: str, actor: ModelSpec, critic: ModelSpec | None = None,
                 ref: ModelSpec | None = None, reward: ModelSpec | None = None) -> dict:
    """Role -> spec for the roles of `algo`'s graph. The reference copies the actor; the reward
    model defaults to the critic's shape (ReaLHF's setting); critic and reward carry a value head."""
    critic = (critic or actor).as_critic()
    every = {"actor": actor, "ref": ref or actor, "reward": (reward or critic).as_critic(),
             "critic": critic}
    roles = {call.role for call in get_graph(algo)}
    return {role: spec for role, spec in every.items() if role in roles}


@dataclass
class PlanReport:
    plan: ExecutionPlan
    evaluation: Evaluation
    simulation: Simulation
    baselines: dict  # name -> simulated iteration time (inf if infeasible)
    search_seconds: float
    evaluations: int
    seconds_to_best: float  # wall time from the start (baselines included) to the final plan
    stop_reason: str = ""  # "exhaustive", "converged", "time limit", "max steps"
    stop_detail: str = ""


def run_planner(algo: str, models: dict, cluster: Cluster, workload: Workload, seed: int = 0,
                time_limit: float = 50.0, max_steps: int = 2_000_000,
                calls: tuple | None = None) -> PlanReport:
    """Search a plan for `calls` (default: the built-in graph of `algo`, which is then a label)."""
    workload.validate()
    t0 = time.perf_counter()
    ev = Evaluator(from_calls(calls) if calls else get_graph(algo), models, cluster, workload)
    cands = candidates(ev)
    for idx, cs in enumerate(cands):
        if not cs:
            call = ev.calls[idx]
            raise UserError(f"{call.name} ({models[call.role].name}) does not fit in memory on "
                            f"{cluster.describe()} with batch {workload.batch}")
    obj = Objective(ev)
    t_base = time.perf_counter()
    found = baselines.all_baselines(obj)
    seconds_per_eval = (time.perf_counter() - t_base) / max(1, obj.evaluations)
    inits = [p for p in found.values() if p is not None and obj(p) < INF]
    if not inits:
        raise UserError(f"no plan fits in memory on {cluster.describe()}: models too large for "
                        f"the cluster (try more GPUs or a smaller batch)")
    left = max(1.0, time_limit - (time.perf_counter() - t0))
    result = search(obj, cands, inits, seconds_per_eval, seed=seed, max_steps=max_steps,
                    time_limit=left)
    seconds = time.perf_counter() - t0
    to_best = seconds - result.seconds + result.seconds_to_best
    evaluation = ev.evaluate(result.placements)
    sim = simulate(ev, evaluation, result.placements)
    plan = to_plan(algo, ev, result.placements, evaluation, sim)
    times = {name: obj(p) if p is not None else INF for name, p in found.items()}
    plan.extra["baselines"] = {k: (v if v < INF else None) for k, v in times.items()}
    plan.extra["search_seconds"] = seconds
    plan.extra["search_stop"] = {"reason": result.stop_reason, "detail": result.detail}
    return PlanReport(plan, evaluation, sim, times, seconds, obj.evaluations, to_best,
                      result.stop_reason, result.detail)


def to_plan(algo: str, ev: Evaluator, placements, evaluation: Evaluation,
            sim: Simulation) -> ExecutionPlan:
    assignment = [CallPlan(mesh, layout, est.n_micro, est.decode_batch)
                  for (mesh, layout), est in zip(placements, evaluation.calls)]
    plan = ExecutionPlan(algo, ev.calls, ev.models, ev.cluster, ev.workload, assignment)
    plan.extra = {
        "estimates": [{"call": ev.calls[e.index].name, "time_s": e.time, "memory_bytes": e.memory}
                      for e in evaluation.calls],
        "steps": [{"kind": s.kind, "for": ev.calls[s.consumer].name,
                   "src": None if s.src is None else [s.src.start, s.src.size],
                   "dst": [s.dst.start, s.dst.size], "time_s": s.time} for s in evaluation.steps],
        "offloaded": list(evaluation.offloaded),
        "iteration_time_s": sim.iteration_time,
        "timeline": timeline(sim),
    }
    return plan


def timeline(sim: Simulation, iteration: int | None = None) -> list[dict]:
    """Tasks of one iteration (default: the middle one), times relative to its first start."""
    it = sim.n_iters // 2 if iteration is None else iteration
    tasks = [t for t in sim.tasks if t.iteration == it]
    t0 = min(t.start for t in tasks)
    return [{"task": t.name, "start_s": t.start - t0, "end_s": t.end - t0,
             "gpus": [list(span) for span in t.spans]} for t in sorted(tasks, key=lambda t: t.start)]


def simulate_plan(plan: ExecutionPlan, n_iters: int = 3) -> tuple[Evaluator, Evaluation, Simulation]:
    """Re-evaluate and simulate a (possibly hand-edited) plan exactly as written."""
    ev = Evaluator(plan.calls, plan.models, plan.cluster, plan.workload)
    evaluation = ev.evaluate(plan.placements(), plan.fixed())
    if not evaluation.feasible:
        raise UserError(f"plan does not fit in memory: {evaluation.reason}")
    return ev, evaluation, simulate(ev, evaluation, plan.placements(), n_iters)
