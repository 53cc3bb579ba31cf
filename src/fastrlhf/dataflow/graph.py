"""An RLHF algorithm as a dataflow graph of model calls (ReaLHF's "model function calls").

A `ModelCall` is one call on one model role: `actor.generate`, `ref.inference`, `actor.train`, ...
It names the batch fields it reads (`inputs`) and writes (`outputs`). A `Graph` is a set of calls
plus the fields the data supplies (`data_keys`); edges follow from matching keys:

    producer(key) ──key──► every call that lists key in its inputs

Two kinds of edge order the calls:
* data edges: a call runs after the producer of each of its inputs;
* weight edges: a `train` call mutates its role's weights, so it runs after every other call on the
  same role in the iteration (e.g. `actor.generate` and an `actor.inference` that recomputes
  log-probs both see the weights the iteration started with).

Validation (all at construction, each a one-line `GraphError`): unknown kind, duplicate call names,
a key with two producers (two calls, or a call and the data), an input that nothing produces, and
cycles (the message lists the calls on the cycle). `order` is a topological order that keeps the
declaration order wherever the edges allow it.

This module is pure Python (no torch) so that `plan/` can reason about graphs without torch.
`weight_syncs` names the cross-iteration edges train → generate of a role that does both (the
runtime's weight sync); `streamable` the scoring calls that may run per finished prompt group.
Left out for now: parameter-reallocation and data-transfer edges of ReaLHF's augmented graph (they
depend on an execution plan, which lives in `plan/`), and calls spanning several iterations.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from fastrlhf.errors import UserError

KINDS = ("generate", "inference", "train")
# the field a call returns when it changes the number of rows (generate: n samples per prompt):
# the input row of each output row, by which the executor re-gathers the iteration batch
ROW_SOURCE_KEY = "prompt_index"


class GraphError(UserError):
    """An invalid graph; graphs may come from user configuration, so this is a one-line user error."""


@dataclass(frozen=True)
class ModelCall:
    """One call on one model role.

    role:    the model it runs on ("actor", "ref", "reward", "critic", ...).
    kind:    "generate" | "inference" | "train" — also the worker method the executor invokes.
    inputs:  batch fields the call reads.
    outputs: batch fields it writes. `train` calls write none: they return statistics.
    name:    label for timings and errors; defaults to "role.kind".
    """

    role: str
    kind: str
    inputs: tuple[str, ...] = ()
    outputs: tuple[str, ...] = ()
    name: str = field(default="")

    def __post_init__(self) -> None:
        object.__setattr__(self, "inputs", tuple(self.inputs))
        object.__setattr__(self, "outputs", tuple(self.outputs))
        if not self.name:
            object.__setattr__(self, "name", f"{self.role}.{self.kind}")
        if self.kind not in KINDS:
            raise GraphError(f"call {self.name}: kind {self.kind!r} is not one of {', '.join(KINDS)}")
        if self.kind == "train" and self.outputs:
            raise GraphError(
                f"call {self.name}: a train call returns statistics, not batch fields "
                f"(declared outputs {list(self.outputs)})"
            )
        for label, keys in (("inputs", self.inputs), ("outputs", self.outputs)):
            repeated = sorted({key for key in keys if keys.count(key) > 1})
            if repeated:
                raise GraphError(f"call {self.name}: repeated {label} {repeated}")


@dataclass(frozen=True)
class Edge:
    """`source` must run before `target`; `keys` are the fields passed (empty for a weight edge)."""

    source: str
    target: str
    keys: tuple[str, ...]


class Graph:
    """Validated model calls with their dependency edges and a topological order."""

    def __init__(self, calls: Sequence[ModelCall], data_keys: Iterable[str] = ()):
        self.calls: tuple[ModelCall, ...] = tuple(calls)
        self.data_keys: tuple[str, ...] = tuple(data_keys)
        self._by_name = _index_by_name(self.calls)
        self.producers: dict[str, str] = _find_producers(self.calls, self.data_keys)
        _check_inputs_available(self.calls, self.producers, self.data_keys)
        data_edges = _data_edges(self.calls, self.producers)
        self.edges: tuple[Edge, ...] = data_edges + _weight_edges(self.calls, data_edges)
        self.order: tuple[ModelCall, ...] = tuple(self._by_name[n] for n in _topological_order(self))

    def call(self, name: str) -> ModelCall:
        return self._by_name[name]

    @property
    def roles(self) -> tuple[str, ...]:
        """Model roles in order of first appearance."""
        return tuple(dict.fromkeys(call.role for call in self.calls))

    @property
    def weight_syncs(self) -> tuple[Edge, ...]:
        """Weight-sync edges across iterations: a role that both trains and generates must bring the
        weights its train call made to its generate call of the *next* iteration. Where the two jobs
        run in different processes (runtime.backend=ray: trainer ranks vs rollout workers) the executor
        sends the committed version before that generate call; in one process the engine's copy is
        refreshed there instead (model/precision.RolloutCopy)."""
        return tuple(Edge(train.name, generate.name, ())
                     for train in self.calls if train.kind == "train"
                     for generate in self.calls if generate.kind == "generate" and generate.role == train.role)

    def streamable(self, generate: ModelCall) -> tuple[ModelCall, ...]:
        """Inference calls on other roles that read only the data and `generate`'s outputs: they can
        score each finished prompt group while the rest still generates (RLHFuse stage fusion)."""
        available = set(self.data_keys) | set(generate.outputs)
        return tuple(call for call in self.order if call.kind == "inference" and call.role != generate.role
                     and set(call.inputs) <= available)

    def consumers(self, key: str) -> tuple[str, ...]:
        """Names of the calls that read `key`."""
        return tuple(call.name for call in self.calls if key in call.inputs)

    def __repr__(self) -> str:
        return f"Graph({' -> '.join(call.name for call in self.order)})"


def _index_by_name(calls: Sequence[ModelCall]) -> dict[str, ModelCall]:
    by_name: dict[str, ModelCall] = {}
    for call in calls:
        if call.name in by_name:
            raise GraphError(f"two calls are named {call.name!r}; give one of them a name=")
        by_name[call.name] = call
    return by_name


def _find_producers(calls: Sequence[ModelCall], data_keys: tuple[str, ...]) -> dict[str, str]:
    """key -> name of the call producing it ("<data>" for data keys); a second producer is an error."""
    producers: dict[str, str] = {}
    for key in data_keys:
        if key in producers:
            raise GraphError(f"data key {key!r} is listed twice")
        producers[key] = "<data>"
    for call in calls:
        for key in call.outputs:
            if key in producers:
                raise GraphError(f"key {key!r} is produced by both {producers[key]} and {call.name}")
            producers[key] = call.name
    return producers


def _check_inputs_available(calls: Sequence[ModelCall], producers: dict[str, str], data_keys) -> None:
    for call in calls:
        missing = [key for key in call.inputs if key not in producers]
        if missing:
            raise GraphError(
                f"call {call.name}: input(s) {missing} are produced by no call and not in the data "
                f"keys {list(data_keys)}"
            )


def _data_edges(calls: Sequence[ModelCall], producers: dict[str, str]) -> tuple[Edge, ...]:
    keys_between: dict[tuple[str, str], list[str]] = {}
    for call in calls:
        for key in call.inputs:
            source = producers[key]
            if source != "<data>":
                keys_between.setdefault((source, call.name), []).append(key)
    return tuple(Edge(src, dst, tuple(keys)) for (src, dst), keys in keys_between.items())


def _weight_edges(calls: Sequence[ModelCall], data_edges: tuple[Edge, ...]) -> tuple[Edge, ...]:
    """Every non-train call on a role runs before that role's train call(s) (unless a data edge says so already)."""
    linked = {(edge.source, edge.target) for edge in data_edges}
    edges = []
    for train in (call for call in calls if call.kind == "train"):
        for other in calls:
            if other.role == train.role and other.kind != "train" and (other.name, train.name) not in linked:
                edges.append(Edge(other.name, train.name, ()))
    return tuple(edges)


def _topological_order(graph: Graph) -> list[str]:
    """Kahn's algorithm; among ready calls the earliest declared goes first."""
    names = [call.name for call in graph.calls]
    successors: dict[str, set[str]] = {name: set() for name in names}
    for edge in graph.edges:
        if edge.source == edge.target:
            raise GraphError(f"cycle: {edge.source} -> {edge.source} (a call reads its own output)")
        successors[edge.source].add(edge.target)
    indegree = {name: 0 for name in names}
    for targets in successors.values():
        for target in targets:
            indegree[target] += 1
    order: list[str] = []
    ready = [name for name in names if indegree[name] == 0]
    while ready:
        name = ready.pop(0)
        order.append(name)
        for target in sorted(successors[name], key=names.index):
            indegree[target] -= 1
            if indegree[target] == 0:
                ready.append(target)
        ready.sort(key=names.index)
    if len(order) < len(names):
        remaining = [name for name in names if name not in order]
        raise GraphError(f"cycle: {' -> '.join(_find_cycle(remaining, successors))}")
    return order


def _find_cycle(remaining: list[str], successors: dict[str, set[str]]) -> list[str]:
    """A loop among the calls Kahn's algorithm could not order, as [a, b, ..., a].

    Each of them still has a predecessor among them, so walking predecessors must repeat a call.
    """
    left = set(remaining)
    predecessors = {name: sorted((s for s in left if name in successors[s]), key=remaining.index)
                    for name in remaining}
    path = [remaining[0]]
    while path[-1] not in path[:-1]:
        path.append(predecessors[path[-1]][0])
    loop = path[path.index(path[-1]):]
    return loop[::-1]
