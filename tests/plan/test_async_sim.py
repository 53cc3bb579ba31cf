"""Asynchronous RLHF with bounded staleness K in the plan simulator (simulator.max_staleness)."""

import importlib.util
import json
import random
import subprocess
import sys
from pathlib import Path

import pytest

from fastrlhf.cli import main
from fastrlhf.plan import baselines
from fastrlhf.plan.async_compare import (compare_async, generate_seconds, is_disaggregated,
                                         iterations_for)
from fastrlhf.plan.evaluate import Evaluator
from fastrlhf.plan.graphs import get_graph
from fastrlhf.plan.hardware import parse_cluster
from fastrlhf.plan.layout import Layout, Mesh
from fastrlhf.plan.model_spec import PRESETS
from fastrlhf.plan.plan import Workload
from fastrlhf.plan.planner import build_models, to_plan
from fastrlhf.plan.search import Objective, candidates
from fastrlhf.plan.simulator import repeating_period, schedule_with_staleness, simulate

REPO = Path(__file__).resolve().parents[2]
BEFORE_ASYNC = "16c4815"  # the last commit whose simulator had no max_staleness
N_ITERS = iterations_for(3)


def _evaluator(algo, model="llama2-7b", cluster="1x8xH100", workload=(512, 256, 256)):
    spec = PRESETS[model]
    return Evaluator(get_graph(algo), build_models(algo, spec, spec), parse_cluster(cluster),
                     Workload(*workload))


def _random_plans(ev, n, seed=0):
    rng, cands, plans = random.Random(seed), candidates(ev), []
    while len(plans) < n:
        p = tuple(rng.choice(c) for c in cands)
        result = ev.evaluate(p)
        if result.feasible:
            plans.append((p, result))
    return plans


def _baseline(ev, name):
    obj = Objective(ev)
    plan = {"symmetric": baselines.symmetric, "disaggregated": baselines.disaggregated,
            "per_call": baselines.per_call}[name](obj)
    return plan, ev.evaluate(plan)


def _simulator_before_async():
    """The simulator module as it was before this feature (skips without git history)."""
    try:
        text = subprocess.run(["git", "show", f"{BEFORE_ASYNC}:src/fastrlhf/plan/simulator.py"],
                              cwd=REPO, capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip(f"git history with commit {BEFORE_ASYNC} not available")
    spec = importlib.util.spec_from_loader("simulator_before_async", loader=None)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    try:
        exec(compile(text, "simulator_before_async.py", "exec"), module.__dict__)
    finally:
        del sys.modules[spec.name]
    return module


@pytest.mark.parametrize("algo", ["ppo", "grpo", "dpo"])
@pytest.mark.parametrize("cluster", ["1x8xH100", "2x8xH100"])
def test_k0_is_the_simulator_before_async_task_for_task(algo, cluster):
    old = _simulator_before_async()
    ev = _evaluator(algo, "qwen2.5-1.5b", cluster, (256, 128, 128))
    for placements, result in _random_plans(ev, 150):
        for n_iters in (1, 3, 5):
            before = old.simulate(ev, result, placements, n_iters)
            now = simulate(ev, result, placements, n_iters, max_staleness=0)
            assert now.iteration_time == before.iteration_time
            assert (now.first_iteration, now.makespan) == (before.first_iteration, before.makespan)
            assert [(t.name, t.iteration, t.deps, t.start, t.end) for t in now.tasks] == \
                   [(t.name, t.iteration, t.deps, t.start, t.end) for t in before.tasks]


@pytest.mark.parametrize("algo", ["ppo", "grpo"])
@pytest.mark.parametrize("cluster", ["1x8xH100", "2x8xH100"])
def test_iteration_time_never_rises_with_k_nor_beats_the_busiest_gpu(algo, cluster):
    ev = _evaluator(algo, "qwen2.5-1.5b", cluster, (256, 128, 128))
    for placements, result in _random_plans(ev, 40, seed=1):
        sims = [simulate(ev, result, placements, N_ITERS, k) for k in range(4)]
        times = [sim.iteration_time for sim in sims]
        assert all(b <= a * (1 + 1e-12) for a, b in zip(times, times[1:])), times
        for sim in sims[1:]:
            assert sim.iteration_time >= sim.busiest_gpu_seconds * (1 - 1e-12)


@pytest.mark.parametrize("algo", ["ppo", "grpo"])
@pytest.mark.parametrize("cluster", ["1x8xH100", "2x8xH100"])
def test_iteration_time_is_settled_after_the_default_iterations(algo, cluster):
    # the warm-up / drain window and whole-cycle spacing: 12 iterations read as 60 do
    ev = _evaluator(algo, "qwen2.5-1.5b", cluster, (256, 128, 128))
    for placements, result in _random_plans(ev, 40, seed=3):
        for k in (1, 2):
            short = simulate(ev, result, placements, N_ITERS, k).iteration_time
            long = simulate(ev, result, placements, 60, k).iteration_time
            assert short == pytest.approx(long, rel=0.03)


@pytest.mark.parametrize("algo", ["ppo", "grpo"])
def test_the_k_stale_schedule_itself_never_rises_on_the_disaggregated_baseline(algo):
    # without the fastest-of-0..K rule in `simulate`: the list schedule of each bound alone
    ev = _evaluator(algo)
    placements, result = _baseline(ev, "disaggregated")
    times = [schedule_with_staleness(ev, result, placements, N_ITERS, k).iteration_time
             for k in range(4)]
    assert all(b <= a * (1 + 1e-12) for a, b in zip(times, times[1:])), times
    assert times[1] < 0.8 * times[0]  # and overlapping does pay here


@pytest.mark.parametrize("algo", ["ppo", "grpo"])
@pytest.mark.parametrize("cluster", ["1x8xH100", "2x8xA100-80G"])
def test_disaggregated_k_ge_1_reaches_max_of_g_and_t_and_not_below(algo, cluster):
    ev = _evaluator(algo, cluster=cluster)
    placements, result = _baseline(ev, "disaggregated")
    assert is_disaggregated(ev, placements)
    sync = simulate(ev, result, placements, N_ITERS).iteration_time
    g = generate_seconds(ev, result)
    t = sync - g
    realloc = sum(s.time for s in result.steps if s.kind == "realloc")
    for k in (1, 2, 3):
        sim = simulate(ev, result, placements, N_ITERS, k)
        # the reallocation runs on both sides (it occupies the source GPUs), so the training side
        # works t + realloc - transfers per iteration: that is all the scheduling leaves
        assert max(g, t) <= sim.iteration_time <= max(g, t) + realloc + 1e-9
        assert sim.iteration_time == pytest.approx(sim.busiest_gpu_seconds, rel=1e-9)
        assert sync / sim.iteration_time <= (g + t) / max(g, t) + 1e-9


def _by_name(sim):
    return {(t.iteration, t.name): t for t in sim.tasks}


@pytest.mark.parametrize("algo", ["ppo", "grpo"])
@pytest.mark.parametrize("plan", ["disaggregated", "per_call", "random"])
def test_generate_never_starts_before_train_of_i_minus_1_minus_k(algo, plan):
    ev = _evaluator(algo)
    cases = [_baseline(ev, plan)] if plan != "random" else _random_plans(ev, 10, seed=2)
    for placements, result in cases:
        for k in range(4):
            sim = simulate(ev, result, placements, N_ITERS, k)
            tasks = _by_name(sim)
            for (it, name), task in tasks.items():
                if task.kind == "generate" or name == "realloc:actor.generate":
                    if it - 1 - k >= 0:
                        assert task.start >= tasks[(it - 1 - k, "actor.train")].end - 1e-9
                if task.kind == "train" and it >= 1:  # other calls keep their edges
                    assert task.start >= tasks[(it - 1, name)].end - 1e-9
                    assert task.start >= tasks[(it, "actor.generate")].end - 1e-9
                if name == "critic.inference" and it >= 1:
                    assert task.start >= tasks[(it - 1, "critic.train")].end - 1e-9


@pytest.mark.parametrize("algo", ["ppo", "grpo"])
def test_on_a_disaggregated_plan_generation_does_overlap_earlier_training(algo):
    ev = _evaluator(algo)
    placements, result = _baseline(ev, "disaggregated")
    tasks = _by_name(simulate(ev, result, placements, N_ITERS, 1))
    overlapping = [it for it in range(1, N_ITERS)
                   if tasks[(it, "actor.generate")].start < tasks[(it - 1, "actor.train")].end]
    assert len(overlapping) >= N_ITERS // 2


@pytest.mark.parametrize("algo", ["ppo", "grpo"])
@pytest.mark.parametrize("plan", ["symmetric", "per_call"])
def test_k_changes_nothing_when_every_call_uses_every_gpu(algo, plan):
    # every task occupies the whole cluster, so any order runs the same work back to back:
    # generation can move ahead of the previous iteration's training, but nothing can overlap
    ev = _evaluator(algo)
    placements, result = _baseline(ev, plan)
    assert all(mesh.size == ev.cluster.n_gpus for mesh, _ in placements)
    work = sum(e.time for e in result.calls) + sum(s.time for s in result.steps
                                                    if s.kind != "transfer")
    for k in range(4):
        raw = schedule_with_staleness(ev, result, placements, N_ITERS, k)
        assert raw.iteration_time == pytest.approx(work, rel=1e-9)
        assert simulate(ev, result, placements, N_ITERS, k).iteration_time == \
            pytest.approx(work, rel=1e-9)


def test_rank_order_keeps_a_later_scorer_from_delaying_training():
    # generate on GPUs 0-3, reference on GPU 4, reward on 6-7, train on all 8: in plain greedy
    # order the reference call of iteration i+1 takes GPU 4 just before actor.train of
    # iteration i could start (simulator docstring); `simulate` keeps the faster schedule
    ev = _evaluator("grpo")
    placements = ((Mesh(0, 4), Layout(2, 2, 1)), (Mesh(6, 2), Layout(1, 1, 2)),
                  (Mesh(4, 1), Layout(1, 1, 1)), (Mesh(0, 8), Layout(1, 1, 8)))
    result = ev.evaluate(placements)
    in_order = schedule_with_staleness(ev, result, placements, N_ITERS, 1, in_rank_order=True)
    greedy = schedule_with_staleness(ev, result, placements, N_ITERS, 1, in_rank_order=False)
    assert in_order.iteration_time < 0.85 * greedy.iteration_time
    assert simulate(ev, result, placements, N_ITERS, 1).iteration_time == in_order.iteration_time
    tasks = _by_name(greedy)
    delayed = [it for it in range(1, N_ITERS - 1)
               if tasks[(it, "actor.train")].start >= tasks[(it + 1, "ref.inference")].end]
    assert delayed


def test_repeating_period_uses_whole_cycles():
    ends = [0.0]
    for gap in [1.0, 3.0] * 4 + [1.0]:  # odd window, cycle of 2
        ends.append(ends[-1] + gap)
    assert repeating_period(ends) == pytest.approx(2.0)
    assert (ends[-1] - ends[0]) / (len(ends) - 1) < 2.0  # the plain mean is biased
    assert repeating_period([0.0, 1.0, 3.0, 6.0]) == pytest.approx(2.0)  # no cycle: the mean
    assert repeating_period([5.0]) == 5.0


def test_simulate_rejects_bad_staleness_and_too_few_iterations():
    ev = _evaluator("grpo")
    placements, result = _baseline(ev, "disaggregated")
    with pytest.raises(ValueError, match=">= 0"):
        simulate(ev, result, placements, N_ITERS, -1)
    with pytest.raises(ValueError, match="at least 6"):
        simulate(ev, result, placements, 5, 2)


def test_compare_async_rows_are_consistent():
    spec = PRESETS["qwen2.5-0.5b"]
    cmp = compare_async("grpo", build_models("grpo", spec, spec), parse_cluster("1x4xA100-40G"),
                        Workload(64, 64, 256), search_seconds=1.0)
    plans = {r.plan_name for r in cmp.rows}
    assert "best sync (searched)" in plans and any(r.disaggregated for r in cmp.rows)
    for name in plans:
        times = [r.iteration_time for r in cmp.rows if r.plan_name == name]
        assert len(times) == 3 and times[0] >= times[1] >= times[2]
    sync_rows = [r for r in cmp.rows if r.max_staleness == 0]
    assert cmp.best_sync == min(r.iteration_time for r in sync_rows)
    assert cmp.sync_disaggregated == min(r.iteration_time for r in sync_rows if r.disaggregated)
    for r in cmp.rows:
        assert r.iteration_time >= r.busiest_gpu - 1e-9 and r.bound >= 1.0
        assert r.schedule_staleness <= r.max_staleness
        if r.plan_name.startswith("disaggregated"):
            assert r.disaggregated


def test_cli_simulate_max_staleness(tmp_path, capsys):
    ev = _evaluator("grpo")
    placements, result = _baseline(ev, "disaggregated")
    plan = to_plan("grpo", ev, placements, result, simulate(ev, result, placements))
    path = tmp_path / "p.json"
    path.write_text(plan.to_json())
    assert main(["simulate", str(path)]) == 0
    sync_out = capsys.readouterr().out
    assert f"iteration time {json.loads(path.read_text())['iteration_time_s']:.3f} s" in sync_out
    assert main(["simulate", str(path), "--max-staleness", "1"]) == 0
    out = capsys.readouterr().out
    async_time = simulate(ev, result, placements, iterations_for(1), 1).iteration_time
    assert "max staleness 1" in out and f"iteration time {async_time:.3f} s" in out
    assert main(["simulate", str(path), "--max-staleness", "-1"]) == 2
    assert main(["simulate", str(path), "--max-staleness", "2", "--iters", "4"]) == 2
    assert "--iters must be >= 6" in capsys.readouterr().err
