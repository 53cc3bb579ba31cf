import subprocess
import sys
from types import SimpleNamespace

import pytest

from fastrlhf.algorithms import graphs as algorithm_graphs
from fastrlhf.errors import UserError
from fastrlhf.plan.graphs import (call_to_dict, dependencies, from_calls, get_graph,
                                  graph_from_dicts)


def test_the_planner_plans_the_graphs_the_trainer_runs():
    assert get_graph("ppo") == algorithm_graphs.ppo_graph().order
    assert get_graph("rloo") == get_graph("grpo")  # RLOO shares GRPO's graph
    with pytest.raises(UserError, match="unknown algorithm"):
        get_graph("a2c")


def test_dependencies_follow_keys_and_weights():
    names = [c.name for c in get_graph("ppo")]
    assert names == ["actor.generate", "reward.score", "critic.inference", "ref.inference",
                     "actor.train", "critic.train"]
    assert dependencies(get_graph("ppo")) == {0: (), 1: (0,), 2: (0,), 3: (0,), 4: (0, 1, 2, 3),
                                              5: (0, 1, 2, 3)}
    assert dependencies(get_graph("grpo"))[3] == (0, 1, 2)
    # a train call follows every earlier call on its role even without a data edge
    calls = from_calls([SimpleNamespace(role="actor", kind="inference", inputs=["x"], outputs=["y"]),
                        SimpleNamespace(role="actor", kind="train", inputs=["x"], outputs=[])])
    assert dependencies(calls) == {0: (), 1: (0,)}


def test_from_duck_typed_calls_sorts_topologically():
    shuffled = [SimpleNamespace(role=c.role, kind=c.kind, inputs=list(c.inputs),
                                outputs=list(c.outputs), name=c.name) for c in reversed(get_graph("grpo"))]
    calls = from_calls(shuffled)
    assert [c.name for c in calls] == ["actor.generate", "ref.inference", "reward.score",
                                       "actor.train"]
    assert set(calls) == set(get_graph("grpo"))


def test_calls_round_trip_through_plan_dicts():
    calls = get_graph("ppo")
    assert graph_from_dicts([call_to_dict(c) for c in calls]) == calls


def test_bad_graphs():
    loop = [SimpleNamespace(role="a", kind="inference", inputs=["x"], outputs=["y"]),
            SimpleNamespace(role="b", kind="inference", inputs=["y"], outputs=["x"])]
    with pytest.raises(UserError):
        from_calls(loop)
    with pytest.raises(UserError):
        from_calls([SimpleNamespace(role="a", kind="train_step", inputs=[], outputs=[])])
    twice = SimpleNamespace(role="a", kind="inference", inputs=["x"], outputs=["y"])
    with pytest.raises(UserError, match="two calls are named"):
        from_calls([twice, twice])
    with pytest.raises(UserError, match="bad call in plan graph"):
        graph_from_dicts([{"role": "actor", "kind": "train", "inputs": [], "outputs": ["z"]}])


def test_planning_imports_no_torch():
    code = ("import sys; from fastrlhf.plan.planner import run_planner; "
            "from fastrlhf.plan.graphs import get_graph; get_graph('ppo'); "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
