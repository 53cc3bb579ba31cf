"""The annealing search must find the exhaustive optimum on every small case."""

import dataclasses

import pytest

from fastrlhf.plan import baselines
from fastrlhf.plan.evaluate import Evaluator
from fastrlhf.plan.graphs import get_graph
from fastrlhf.plan.hardware import ACCELERATORS, make_cluster
from fastrlhf.plan.layout import Mesh, all_layouts
from fastrlhf.plan.model_spec import PRESETS, ModelSpec
from fastrlhf.plan.plan import Workload
from fastrlhf.plan.search import INF, Objective, anneal, candidates, exhaustive

TINY = ModelSpec("tiny", 4, 256, 688, 4, 2, 1000)
_G = get_graph("grpo")
GRAPHS = {
    2: (_G[1], _G[2]),  # two independent scoring calls
    3: (_G[0], _G[1], dataclasses.replace(_G[3], inputs=("sequences", "logprobs", "rewards"))),
    4: _G,
}
# (accelerator, nodes, gpus per node, calls, model, batch)
CASES = [
    ("cpu", 1, 1, 4, "tiny", 16),
    ("cpu", 1, 2, 2, "tiny", 8),
    ("cpu", 1, 2, 4, "tiny", 16),
    ("cpu", 1, 4, 2, "tiny", 16),
    ("cpu", 1, 4, 3, "tiny", 8),
    ("cpu", 2, 2, 3, "tiny", 8),
    ("cpu", 1, 8, 2, "tiny", 8),
    ("cpu", 2, 4, 2, "tiny", 16),
    ("L40S", 1, 4, 3, "tiny", 8),
    ("A100-40G", 1, 2, 4, "qwen2.5-3b", 128),
    ("A100-40G", 1, 4, 3, "qwen2.5-3b", 256),
    ("A100-40G", 2, 2, 3, "llama2-7b", 128),
    ("A100-40G", 1, 8, 2, "llama2-13b", 256),
]


def _evaluator(acc, nodes, gpn, n_calls, model, batch, hbm=None):
    accelerator = ACCELERATORS[acc]
    if hbm:
        accelerator = dataclasses.replace(accelerator, hbm_bytes=hbm)
    spec = TINY if model == "tiny" else PRESETS[model]
    models = {"actor": spec, "ref": spec, "reward": spec.as_critic()}
    return Evaluator(GRAPHS[n_calls], models, make_cluster(accelerator, nodes, gpn),
                     Workload(batch, 64, 64))


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(map(str, c)))
def test_anneal_matches_exhaustive(case):
    ev = _evaluator(*case)
    cands = candidates(ev)
    best = exhaustive(Objective(ev), cands)
    assert best.iteration_time < INF
    obj = Objective(ev)
    inits = [p for p in baselines.all_baselines(obj).values() if p is not None]
    found = anneal(obj, cands, inits, seed=1, max_steps=1500, time_limit=60)
    assert found.iteration_time == pytest.approx(best.iteration_time, rel=1e-9)
    result = ev.evaluate(found.placements)
    assert result.feasible and max(result.gpu_peak) <= ev.acc.memory_budget


def test_search_beats_baselines_where_splitting_pays():
    # generate, then two independent scoring calls of 8 sequences on 4 slow-linked CPUs: the
    # scoring calls side by side on halves of the machine beat any full-machine layout
    ev = _evaluator("cpu", 1, 4, 3, "tiny", 8)
    ev = Evaluator(_G[:3], ev.models, ev.cluster, ev.workload)
    obj = Objective(ev)
    found = baselines.all_baselines(obj)
    best = exhaustive(Objective(ev), candidates(ev))
    assert best.iteration_time < 0.9 * min(obj(p) for p in found.values() if p)
    meshes = [m for m, _ in best.placements]
    assert meshes[1] != meshes[2] and not meshes[1].overlaps(meshes[2])


def test_memory_is_a_hard_constraint():
    roomy = _evaluator("A100-40G", 1, 4, 3, "qwen2.5-3b", 256)
    fast = exhaustive(Objective(roomy), candidates(roomy))
    tight = _evaluator("A100-40G", 1, 4, 3, "qwen2.5-3b", 256, hbm=22e9)
    assert not tight.evaluate(fast.placements).feasible  # the roomy optimum no longer fits
    best = exhaustive(Objective(tight), candidates(tight))
    assert best.iteration_time > fast.iteration_time
    obj = Objective(tight)
    inits = [p for p in baselines.all_baselines(obj).values() if p is not None]
    found = anneal(obj, candidates(tight), inits, seed=0, max_steps=1500, time_limit=60)
    assert found.iteration_time == pytest.approx(best.iteration_time, rel=1e-9)
    assert max(tight.evaluate(found.placements).gpu_peak) <= tight.acc.memory_budget


def test_seeded_search_is_reproducible():
    ev = _evaluator("cpu", 1, 8, 2, "tiny", 8)
    runs = []
    for _ in range(2):
        obj = Objective(ev)
        init = [baselines.symmetric(obj)]
        runs.append(anneal(obj, candidates(ev), init, seed=7, max_steps=300, time_limit=60))
    assert runs[0].placements == runs[1].placements


def test_baseline_shapes():
    ev = _evaluator("A100-40G", 1, 4, 3, "qwen2.5-3b", 256)
    obj = Objective(ev)
    sym = baselines.symmetric(obj)
    assert len(set(sym)) == 1 and sym[0][0] == Mesh(0, 4)
    dis = baselines.disaggregated(obj)
    gen_mesh = dis[0][0]
    assert all(not gen_mesh.overlaps(m) for m, _ in dis[1:]) and len({p for p in dis[1:]}) == 1
    per = baselines.per_call(obj, sym)
    assert all(m == Mesh(0, 4) for m, _ in per) and obj(per) < obj(sym)
    last = len(per) - 1  # the last call chose its layout with all others already fixed
    for lay in all_layouts(Mesh(0, 4), ev.models[ev.calls[last].role], 4, 256):
        assert obj(per[:last] + ((Mesh(0, 4), lay),)) >= obj(per)


def test_planner_respects_its_time_limit_at_128_gpus():
    import time

    from fastrlhf.plan.hardware import parse_cluster
    from fastrlhf.plan.planner import build_models, run_planner

    spec = PRESETS["llama2-70b"]
    t0 = time.perf_counter()
    report = run_planner("ppo", build_models("ppo", spec, spec), parse_cluster("16x8xH100"),
                         Workload(512, 256, 256), seed=0, time_limit=4.0)
    assert time.perf_counter() - t0 < 4.0 + 2.0  # one polish sweep / final simulation of slack
    assert report.stop_reason in ("time limit", "converged") and report.stop_detail
    assert report.simulation.iteration_time <= min(report.baselines.values())
    assert max(report.evaluation.gpu_peak) <= report.plan.cluster.accelerator.memory_budget


def test_small_case_stops_early_with_the_exhaustive_optimum():
    from fastrlhf.plan.planner import run_planner

    ev = _evaluator("cpu", 1, 4, 3, "tiny", 8)
    best = exhaustive(Objective(ev), candidates(ev))
    report = run_planner("grpo", ev.models, ev.cluster, ev.workload, seed=0, time_limit=30.0,
                         calls=ev.calls)
    assert report.stop_reason == "exhaustive"
    assert report.search_seconds < 0.2 * 30.0  # well before the limit (a few seconds at most)
    assert report.simulation.iteration_time == pytest.approx(best.iteration_time, rel=1e-9)
    assert report.plan.extra["search_stop"]["reason"] == "exhaustive"
    assert report.plan.extra["search_seconds"] == report.search_seconds


def test_search_enumerates_only_what_fits_its_budget():
    from fastrlhf.plan.search import n_plans, search

    ev = _evaluator("cpu", 1, 4, 3, "tiny", 8)
    cands = candidates(ev)
    obj = Objective(ev)
    inits = [p for p in baselines.all_baselines(obj).values() if p is not None]
    # 1 s per plan: enumerating would take far longer than the budget -> annealing
    slow = search(obj, cands, inits, seconds_per_eval=1.0, seed=0, time_limit=60)
    assert slow.stop_reason in ("converged", "time limit") and obj.evaluations < n_plans(cands)
    fast = search(Objective(ev), cands, inits, seconds_per_eval=1e-6, seed=0, time_limit=60)
    assert fast.stop_reason == "exhaustive" and fast.evaluations == n_plans(cands)
    assert fast.iteration_time <= slow.iteration_time


def test_exhaustive_is_cut_at_its_deadline():
    ev = _evaluator("cpu", 1, 4, 3, "tiny", 8)
    cut = exhaustive(Objective(ev), candidates(ev), deadline=0.0)
    assert cut.stop_reason == "time limit" and cut.placements is None


@pytest.mark.parametrize("case", [CASES[4], CASES[10]], ids=lambda c: "-".join(map(str, c)))
def test_annealing_stops_on_convergence(case):
    ev = _evaluator(*case)
    best = exhaustive(Objective(ev), candidates(ev))
    obj = Objective(ev)
    inits = [p for p in baselines.all_baselines(obj).values() if p is not None]
    found = anneal(obj, candidates(ev), inits, seed=1, max_steps=10**9, time_limit=60,
                   cycle_steps=500)
    assert found.stop_reason == "converged", found.detail
    assert found.seconds < 30  # not the time limit
    assert found.iteration_time == pytest.approx(best.iteration_time, rel=1e-9)
