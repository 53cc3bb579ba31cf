from types import SimpleNamespace

import pytest

from fastrlhf.errors import UserError
from fastrlhf.plan.graphs import dependencies, from_calls, grpo_graph, ppo_graph


def test_dependencies_follow_keys():
    deps = dependencies(ppo_graph())  # generate, reward, ref, critic.inf, actor.train, critic.train
    assert deps == {0: (), 1: (0,), 2: (0,), 3: (0,), 4: (0, 1, 2, 3), 5: (0, 1, 2, 3)}
    assert dependencies(grpo_graph())[3] == (0, 1, 2)


def test_from_duck_typed_calls_sorts_topologically():
    shuffled = [SimpleNamespace(role=c.role, kind=c.kind, inputs=list(c.inputs),
                                outputs=list(c.outputs)) for c in reversed(grpo_graph())]
    calls = from_calls(shuffled)
    assert [c.name for c in calls] == ["actor.generate", "ref.inference", "reward.inference",
                                       "actor.train"]
    assert set(calls) == set(grpo_graph())


def test_bad_graphs():
    loop = [SimpleNamespace(role="a", kind="inference", inputs=["x"], outputs=["y"]),
            SimpleNamespace(role="b", kind="inference", inputs=["y"], outputs=["x"])]
    with pytest.raises(UserError):
        from_calls(loop)
    with pytest.raises(UserError):
        from_calls([SimpleNamespace(role="a", kind="train_step", inputs=[], outputs=[])])
