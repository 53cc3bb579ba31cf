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
from fastrlhf.dataflow.graph import KINDS, GraphError, ModelCall
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


def _make_call(role, kind, inputs, outputs, name="") -> ModelCall:
    if kind not in KINDS:
        raise UserError(f"bad call kind {kind!r} (known: {', '.join(KINDS)})")
    return ModelCall(str(role), str(kind), tuple(inputs), tuple(outputs), name=str(name or ""))


def _unique_names(calls: tuple[ModelCall, ...]) -> tuple[ModelCall, ...]:
    names = [call.name for call in calls]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise UserError(f"two calls are named {repeated[0]!r}; give one of them a name")
    return calls


def from_calls(calls) -> tuple[ModelCall, ...]:
    """Planner calls from any objects with role / kind / inputs / outputs (and optionally name),
    in topological order."""
    return topological(_unique_names(tuple(
        _make_call(c.role, c.kind, c.inputs, c.outputs, getattr(c, "name", "")) for c in calls)))


def topological(calls: tuple[ModelCall, ...]) -> tuple[ModelCall, ...]:
    """Kahn's algorithm over the data edges, keeping the given order among ready calls."""
    producer = {key: i for i, call in enumerate(calls) for key in call.outputs}
    deps = {i: {producer[k] for k in call.inputs if k in producer} - {i}
            for i, call in enumerate(calls)}
    order: list[int] = []
    while len(order) < len(calls):
        ready = [i for i in range(len(calls)) if i not in order and deps[i] <= set(order)]
        if not ready:
            raise UserError("the call graph has a cycle")
        order.append(ready[0])
    return tuple(calls[i] for i in order)


def call_to_dict(call: ModelCall) -> dict:
    return {"name": call.name, "role": call.role, "kind": call.kind, "inputs": list(call.inputs),
            "outputs": list(call.outputs)}


def graph_from_dicts(items: list) -> tuple[ModelCall, ...]:
    """Inverse of `call_to_dict` over a plan's calls (`name` optional: role.kind)."""
    try:
        return _unique_names(tuple(
            _make_call(d["role"], d["kind"], d["inputs"], d["outputs"], d.get("name", ""))
            for d in items))
    except (KeyError, TypeError, AttributeError) as exc:
        raise UserError(f"bad call in plan graph: {exc}") from None
    except GraphError as exc:
        raise UserError(f"bad call in plan graph: {exc}") from None
