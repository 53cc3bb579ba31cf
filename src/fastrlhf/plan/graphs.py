"""The planner's view of an algorithm: the model calls of its dataflow graph, in order.

The graphs are the ones the trainer executes (`fastrlhf.algorithms.graphs.GRAPHS`, built from
`fastrlhf.dataflow.graph.ModelCall`; both pure Python, so planning needs no torch). A call depends,
within one iteration, on the producer of each of its inputs (data edges) and, for a `train` call,
on every earlier call on the same role (weight edges: they must see the weights the iteration
started with). Keys produced by no call (`prompts`) are graph inputs.

Roles `actor` and `critic` are trained; `ref` and `reward` are frozen.
"""

from __future__ import annotations

from fastrlhf.algorithms.graphs import GRAPHS
from fastrlhf.dataflow.graph import Graph, GraphError, ModelCall
from fastrlhf.errors import UserError

TRAINABLE_ROLES = ("actor", "critic")


def get_graph(algo: str) -> tuple[ModelCall, ...]:
    """The calls of algorithm `algo`'s graph (default options) in topological order."""
    if algo not in GRAPHS:
        raise UserError(f"unknown algorithm {algo!r} (known: {', '.join(sorted(GRAPHS))})")
    return GRAPHS[algo]().order


def dependencies(calls: tuple[ModelCall, ...]) -> dict[int, tuple[int, ...]]:
    """For each call index, the indices of the calls it must follow within an iteration: the
    producers of its inputs and, for a train call, the earlier calls on its role."""
    producer = {}
    for idx, call in enumerate(calls):
        for key in call.outputs:
            producer[key] = idx
    deps = {}
    for idx, call in enumerate(calls):
        before = {producer[k] for k in call.inputs if k in producer}
        if call.kind == "train":
            before |= {j for j in range(idx) if calls[j].role == call.role}
        deps[idx] = tuple(sorted(before - {idx}))
    return deps


def _as_graph(calls: tuple[ModelCall, ...]) -> Graph:
    """The calls as a validated `dataflow.graph.Graph` (unique names, one producer per key, no
    cycle); keys no call produces are its data keys."""
    produced = {key for call in calls for key in call.outputs}
    inputs = dict.fromkeys(k for call in calls for k in call.inputs if k not in produced)
    return Graph(calls, data_keys=tuple(inputs))


def from_calls(calls) -> tuple[ModelCall, ...]:
    """Planner calls from any objects with role / kind / inputs / outputs (and optionally name),
    in topological order (the dataflow graph's, which keeps the given order where it can)."""
    return _as_graph(tuple(ModelCall(c.role, c.kind, tuple(c.inputs), tuple(c.outputs),
                                     name=getattr(c, "name", "") or "") for c in calls)).order


def call_to_dict(call: ModelCall) -> dict:
    return {"name": call.name, "role": call.role, "kind": call.kind, "inputs": list(call.inputs),
            "outputs": list(call.outputs)}


def graph_from_dicts(items: list) -> tuple[ModelCall, ...]:
    """Inverse of `call_to_dict` over a plan's calls, in the plan's order (`name` optional:
    role.kind); validated as a dataflow graph."""
    try:
        calls = tuple(ModelCall(d["role"], d["kind"], tuple(d["inputs"]), tuple(d["outputs"]),
                                name=d.get("name", "") or "") for d in items)
        _as_graph(calls)
    except (KeyError, TypeError, AttributeError, GraphError) as exc:
        raise UserError(f"bad call in plan graph: {exc}") from None
    return calls
