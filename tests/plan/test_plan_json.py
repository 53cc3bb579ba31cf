import json

import pytest

from fastrlhf.errors import UserError
from fastrlhf.plan.hardware import parse_cluster
from fastrlhf.plan.model_spec import PRESETS
from fastrlhf.plan.plan import Workload, load_plan, plan_from_dict
from fastrlhf.plan.planner import build_models, run_planner, simulate_plan


@pytest.fixture(scope="module")
def report():
    models = build_models("ppo", PRESETS["qwen2.5-1.5b"])
    return run_planner("ppo", models, parse_cluster("1x4xA100-40G"), Workload(64, 64, 64),
                       seed=0, time_limit=20, max_steps=400)


def test_round_trip_preserves_everything(report, tmp_path):
    plan = report.plan
    again = plan_from_dict(json.loads(plan.to_json()))
    assert again.calls == plan.calls and again.models == plan.models
    assert again.cluster == plan.cluster and again.workload == plan.workload
    assert again.assignment == plan.assignment
    assert json.loads(again.to_json())["calls"] == json.loads(plan.to_json())["calls"]
    path = tmp_path / "p.json"
    path.write_text(plan.to_json())
    _, _, sim = simulate_plan(load_plan(str(path)))
    assert sim.iteration_time == pytest.approx(report.simulation.iteration_time, rel=1e-12)


def test_models_per_role(report):
    assert set(report.plan.models) == {"actor", "ref", "reward", "critic"}
    assert report.plan.models["critic"].value_head and not report.plan.models["ref"].value_head
    assert set(build_models("grpo", PRESETS["qwen2.5-1.5b"])) == {"actor", "ref", "reward"}


def test_json_lists_augmented_steps(report):
    data = json.loads(report.plan.to_json())
    assert data["iteration_time_s"] == pytest.approx(report.simulation.iteration_time)
    assert {s["kind"] for s in data["steps"]} <= {"realloc", "reload", "transfer"}
    assert set(data["baselines"]) == {"symmetric", "disaggregated", "per_call"}
    assert report.simulation.iteration_time <= min(v for v in report.baselines.values()) + 1e-12


@pytest.mark.parametrize("mutate", [
    lambda d: d.pop("format"),
    lambda d: d["calls"][0].pop("mesh"),
    lambda d: d["calls"][0].update(dp=3),
    lambda d: d["calls"][1]["mesh"].update(start=1, size=2),
    lambda d: d["calls"][0].update(kind="dance"),
    lambda d: d["workload"].update(batch=0),
    lambda d: d["models"].pop("critic"),
    lambda d: d["cluster"].update(gpus_per_node=3),
])
def test_malformed_plans_are_user_errors(report, mutate):
    data = json.loads(report.plan.to_json())
    mutate(data)
    with pytest.raises(UserError):
        plan_from_dict(data)
