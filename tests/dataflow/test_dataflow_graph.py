import pytest

from fastrlhf.dataflow.graph import Graph, GraphError, ModelCall


def names(graph: Graph) -> list[str]:
    return [call.name for call in graph.order]


def test_order_follows_data_even_when_declared_backwards():
    calls = [
        ModelCall("actor", "train", ("seq", "ref_lp", "reward")),
        ModelCall("ref", "inference", ("seq",), ("ref_lp",)),
        ModelCall("reward", "inference", ("seq",), ("reward",)),
        ModelCall("actor", "generate", ("prompt",), ("seq",)),
    ]
    graph = Graph(calls, data_keys=["prompt"])
    assert names(graph) == ["actor.generate", "ref.inference", "reward.inference", "actor.train"]
    assert graph.producers["ref_lp"] == "ref.inference" and graph.producers["prompt"] == "<data>"
    assert graph.consumers("seq") == ("actor.train", "ref.inference", "reward.inference")
    assert graph.roles == ("actor", "ref", "reward")


def test_train_runs_after_every_other_call_on_its_role():
    # actor.inference reads only data, so only the weight edge puts it before actor.train
    calls = [
        ModelCall("actor", "train", ("x",)),
        ModelCall("actor", "inference", ("x",), ("y",)),
    ]
    graph = Graph(calls, data_keys=["x"])
    assert names(graph) == ["actor.inference", "actor.train"]
    assert any(e.source == "actor.inference" and e.target == "actor.train" and e.keys == () for e in graph.edges)


def test_missing_input_is_named():
    with pytest.raises(GraphError, match=r"call ref.inference: input\(s\) \['seqs'\]"):
        Graph([ModelCall("actor", "generate", ("prompt",), ("seq",)),
               ModelCall("ref", "inference", ("seqs",), ("lp",))], data_keys=["prompt"])


def test_duplicate_producers_and_names_are_rejected():
    with pytest.raises(GraphError, match="'seq' is produced by both a.inference and b.inference"):
        Graph([ModelCall("a", "inference", ("x",), ("seq",)), ModelCall("b", "inference", ("x",), ("seq",))], ["x"])
    with pytest.raises(GraphError, match="'x' is produced by both <data> and a.inference"):
        Graph([ModelCall("a", "inference", ("y",), ("x",))], ["x", "y"])
    with pytest.raises(GraphError, match="two calls are named"):
        Graph([ModelCall("a", "inference", ("x",), ("y",)), ModelCall("a", "inference", ("x",), ("z",))], ["x"])


def test_cycles_are_rejected_with_the_loop_spelled_out():
    calls = [
        ModelCall("c", "inference", ("y",), ("z",)),  # downstream of the loop: not part of it
        ModelCall("a", "inference", ("y",), ("x",)),
        ModelCall("b", "inference", ("x",), ("y",)),
    ]
    with pytest.raises(GraphError, match=r"cycle: (a.inference -> b.inference -> a.inference|"
                                         r"b.inference -> a.inference -> b.inference)$"):
        Graph(calls)
    with pytest.raises(GraphError, match="reads its own output"):
        Graph([ModelCall("a", "inference", ("x",), ("x",))])


def test_call_validation():
    with pytest.raises(GraphError, match="kind 'score' is not one of"):
        ModelCall("reward", "score", ("x",), ("r",))
    with pytest.raises(GraphError, match="returns statistics"):
        ModelCall("actor", "train", ("x",), ("loss",))
    with pytest.raises(GraphError, match=r"repeated inputs \['x'\]"):
        ModelCall("a", "inference", ("x", "x"), ("y",))
    assert ModelCall("reward", "inference", ["c"], ["r"], name="reward.score").inputs == ("c",)


def test_graph_module_does_not_need_torch():
    # plan/ reasons about graphs without torch (DESIGN: "plan/ is pure")
    import subprocess
    import sys

    code = "import sys, fastrlhf.dataflow.graph; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
