import dataclasses

import pytest

from fastrlhf.plan.evaluate import Evaluator
from fastrlhf.plan.graphs import get_graph
from fastrlhf.plan.hardware import ACCELERATORS, make_cluster
from fastrlhf.plan.layout import Layout, Mesh
from fastrlhf.plan.model_spec import PRESETS
from fastrlhf.plan.plan import Workload
from fastrlhf.plan.simulator import Task, gpu_busy, list_schedule, simulate


def test_list_schedule_by_hand():
    tasks = [
        Task("A", 0, "x", ((0, 2),), 1.0, 0),
        Task("B", 0, "x", ((0, 1),), 2.0, 1, [(0, 0.0)]),
        Task("C", 0, "x", ((1, 2),), 3.0, 2, [(0, 0.0)]),
        Task("D", 0, "x", ((0, 1), (1, 2)), 1.0, 3, [(1, 0.0), (2, 0.5)]),  # 0.5 s transfer C->D
        Task("E", 1, "x", ((0, 1),), 1.0, 4),  # independent, but waits for GPU 0 (A ties first)
    ]
    list_schedule(tasks, 2)
    busy = gpu_busy(tasks, 2)
    assert [(t.start, t.end) for t in tasks] == [(0, 1), (1, 3), (1, 4), (4.5, 5.5), (3, 4)]
    assert busy == [1 + 2 + 1 + 1, 1 + 3 + 1]


def _grpo_eval(placements, batch=64):
    a = PRESETS["qwen2.5-0.5b"]
    ev = Evaluator(get_graph("grpo"), {"actor": a, "ref": a, "reward": a.as_critic()},
                   make_cluster(ACCELERATORS["H100"], 1, 4), Workload(batch, 128, 128))
    return ev, ev.evaluate(placements)


def test_serial_chain_period_is_sum_of_steps():
    # everything on one mesh and layout: no reallocation, no transfers, nothing overlaps
    full = (Mesh(0, 4), Layout(4, 1, 1))
    ev, res = _grpo_eval((full,) * 4)
    assert res.feasible and res.steps == []
    sim = simulate(ev, res, (full,) * 4, n_iters=3)
    assert sim.iteration_time == pytest.approx(sum(e.time for e in res.calls))
    assert sim.utilisation == pytest.approx([1.0] * 4)
    assert sim.accelerator_seconds == pytest.approx(4 * sim.iteration_time)


def test_disjoint_meshes_overlap_and_reallocation_is_scheduled():
    gen = (Mesh(0, 2), Layout(2, 1, 1))
    rest = (Mesh(2, 2), Layout(1, 2, 1))
    placements = (gen, (Mesh(2, 1), Layout(1, 1, 1)), (Mesh(3, 1), Layout(1, 1, 1)), rest)
    ev, res = _grpo_eval(placements)
    kinds = sorted(s.kind for s in res.steps)
    assert kinds == ["realloc"] + ["transfer"] * 5  # gen->reward, gen->ref, 3 into train
    sim = simulate(ev, res, placements)
    it1 = {t.name: t for t in sim.tasks if t.iteration == 1}
    reward, ref = it1["reward.score"], it1["ref.inference"]
    assert reward.start < ref.end and ref.start < reward.end  # run concurrently
    realloc = it1["realloc:actor.generate"]
    train0 = next(t for t in sim.tasks if t.iteration == 0 and t.name == "actor.train")
    assert realloc.start >= train0.end and it1["actor.generate"].start >= realloc.end
    assert set(realloc.gpus) == {0, 1, 2, 3}


def test_ppo_critic_train_overlaps_next_generation():
    h100 = make_cluster(ACCELERATORS["H100"], 1, 8)
    a, c = PRESETS["qwen2.5-1.5b"], PRESETS["qwen2.5-7b"].as_critic()  # critic trains longest
    models = {"actor": a, "ref": a, "reward": a.as_critic(), "critic": c}
    ev = Evaluator(get_graph("ppo"), models, h100, Workload(128, 128, 128))
    left, right = (Mesh(0, 4), Layout(4, 1, 1)), (Mesh(4, 4), Layout(4, 1, 1))
    placements = (left, right, left, right, left, right)
    res = ev.evaluate(placements)
    sim = simulate(ev, res, placements, n_iters=4)
    t = {(x.iteration, x.name): x for x in sim.tasks}
    assert t[(2, "actor.generate")].start < t[(1, "critic.train")].end
    assert sim.iteration_time < sim.first_iteration


def test_reallocation_only_when_layout_differs():
    same = (Mesh(0, 4), Layout(2, 2, 1))
    ev, res = _grpo_eval((same,) * 4)
    assert not [s for s in res.steps if s.kind == "realloc"]
    other = (Mesh(0, 4), Layout(4, 1, 1))
    ev, res = _grpo_eval((other, same, same, same))
    assert [s.kind for s in res.steps] == ["realloc"]


def test_infeasible_plan_is_rejected():
    tiny_mem = dataclasses.replace(ACCELERATORS["H100"], hbm_bytes=4e9)
    a = PRESETS["qwen2.5-1.5b"]  # 1.5B x 18 B of training state does not fit 4 GB
    ev = Evaluator(get_graph("grpo"), {"actor": a, "ref": a, "reward": a.as_critic()},
                   make_cluster(tiny_mem, 1, 1), Workload(8, 16, 16))
    one = (Mesh(0, 1), Layout(1, 1, 1))
    res = ev.evaluate((one,) * 4)
    assert not res.feasible and "does not fit" in res.reason
    with pytest.raises(ValueError):
        simulate(ev, res, (one,) * 4)
