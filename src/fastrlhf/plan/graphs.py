"""RLHF algorithms as dataflow graphs of model calls (ReaLHF sec. 3), as plain data.

A `ModelCall(role, kind, inputs, outputs)` uses the same field names as
`fastrlhf.dataflow.graph.ModelCall` so the two can be unified; this module deliberately does not
import the runtime one (the planner must stay importable without torch). Edges are implied by
matching keys: a call depends on the producer of each of its inputs. Keys produced by no call
(`prompts`) are graph inputs.

Roles `actor` and `critic` are trained; `ref` and `reward` are frozen.
"""

from __future__ import annotations

from dataclasses import dataclass

from fastrlhf.errors import UserError

KINDS = ("generate", "inference", "train")
TRAINABLE_ROLES = ("actor", "critic")


@dataclass(frozen=True)
class ModelCall:
    role: str
    kind: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]

    @property
    def name(self) -> str:
        return f"{self.role}.{self.kind}"

    def to_dict(self) -> dict:
        return {"role": self.role, "kind": self.kind, "inputs": list(self.inputs),
                "outputs": list(self.outputs)}


def _call(role: str, kind: str, inputs: str, outputs: str) -> ModelCall:
    return ModelCall(role, kind, tuple(inputs.split()), tuple(outputs.split()))


def ppo_graph() -> tuple[ModelCall, ...]:
    return (
        _call("actor", "generate", "prompts", "sequences logprobs"),
        _call("reward", "inference", "sequences", "rewards"),
        _call("ref", "inference", "sequences", "ref_logprobs"),
        _call("critic", "inference", "sequences", "values"),
        _call("actor", "train", "sequences logprobs ref_logprobs rewards values", ""),
        _call("critic", "train", "sequences rewards ref_logprobs logprobs values", ""),
    )


def grpo_graph() -> tuple[ModelCall, ...]:
    return (
        _call("actor", "generate", "prompts", "sequences logprobs"),
        _call("reward", "inference", "sequences", "rewards"),
        _call("ref", "inference", "sequences", "ref_logprobs"),
        _call("actor", "train", "sequences logprobs ref_logprobs rewards", ""),
    )


GRAPHS = {"ppo": ppo_graph, "grpo": grpo_graph}


def get_graph(algo: str) -> tuple[ModelCall, ...]:
    if algo not in GRAPHS:
        raise UserError(f"unknown algorithm {algo!r} (known: {', '.join(GRAPHS)})")
    return GRAPHS[algo]()


def dependencies(calls: tuple[ModelCall, ...]) -> dict[int, tuple[int, ...]]:
    """For each call index, the indices of the calls producing its inputs (within an iteration)."""
    producer = {}
    for idx, call in enumerate(calls):
        for key in call.outputs:
            producer[key] = idx
    return {idx: tuple(sorted({producer[k] for k in call.inputs if k in producer}))
            for idx, call in enumerate(calls)}


def from_calls(calls) -> tuple[ModelCall, ...]:
    """Planner calls from any objects with role / kind / inputs / outputs (e.g. the calls of a
    `fastrlhf.dataflow.graph.Graph`, duck-typed so no runtime import), in topological order."""
    plain = [ModelCall(c.role, c.kind, tuple(c.inputs), tuple(c.outputs)) for c in calls]
    for call in plain:
        if call.kind not in KINDS:
            raise UserError(f"bad call kind {call.kind!r} (known: {', '.join(KINDS)})")
    return topological(tuple(plain))


def topological(calls: tuple[ModelCall, ...]) -> tuple[ModelCall, ...]:
    """Kahn's algorithm over the key edges, keeping the given order among ready calls."""
    deps = {i: set(d) for i, d in dependencies(calls).items()}
    order: list[int] = []
    while len(order) < len(calls):
        ready = [i for i in range(len(calls)) if i not in order and deps[i] <= set(order)]
        if not ready:
            raise UserError("the call graph has a cycle")
        order.append(ready[0])
    return tuple(calls[i] for i in order)


def graph_from_dicts(items: list) -> tuple[ModelCall, ...]:
    try:
        calls = tuple(ModelCall(d["role"], d["kind"], tuple(d["inputs"]), tuple(d["outputs"]))
                      for d in items)
    except (KeyError, TypeError) as exc:
        raise UserError(f"bad call in plan graph: {exc}") from None
    for call in calls:
        if call.kind not in KINDS:
            raise UserError(f"bad call kind {call.kind!r} (known: {', '.join(KINDS)})")
    return calls
