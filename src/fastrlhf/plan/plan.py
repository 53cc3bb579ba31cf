"""Execution plans (ReaLHF sec. 4): one mesh + layout per model call, and their JSON form.

An `ExecutionPlan` is self-contained: graph, model specs per role, cluster, workload and one
`CallPlan` per call (same order as the graph). `n_micro` / `decode_batch` of 0 mean "derive"
(the evaluator picks the fastest value that fits in memory); non-zero values are honoured, so a
hand-edited plan is simulated as written. The augmented steps (reallocation, reload, transfer) are
derived from the plan by `fastrlhf.plan.evaluate` and written to JSON for reading only.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from fastrlhf.errors import UserError
from fastrlhf.plan.graphs import ModelCall, call_to_dict, graph_from_dicts
from fastrlhf.plan.hardware import Cluster, cluster_from_dict
from fastrlhf.plan.layout import Layout, Mesh, is_valid_layout, is_valid_mesh
from fastrlhf.plan.model_spec import ModelSpec, spec_from_dict

FORMAT_VERSION = 1


@dataclass(frozen=True)
class Workload:
    """One RLHF iteration: `batch` sequences (prompts x samples), prompt and generation lengths."""

    batch: int
    prompt_len: int
    gen_len: int
    zero_stage: int = 1

    @property
    def seq_len(self) -> int:
        return self.prompt_len + self.gen_len

    def validate(self) -> None:
        if min(self.batch, self.prompt_len, self.gen_len) < 1:
            raise UserError("batch, prompt length and generation length must all be >= 1")
        if self.zero_stage not in (0, 1, 2, 3):
            raise UserError(f"ZeRO stage must be 0..3, got {self.zero_stage}")


@dataclass(frozen=True)
class CallPlan:
    mesh: Mesh
    layout: Layout
    n_micro: int = 0
    decode_batch: int = 0


@dataclass
class ExecutionPlan:
    algo: str
    calls: tuple[ModelCall, ...]
    models: dict[str, ModelSpec]
    cluster: Cluster
    workload: Workload
    assignment: list[CallPlan]
    extra: dict = field(default_factory=dict)  # derived numbers written for the reader

    def placements(self) -> tuple[tuple[Mesh, Layout], ...]:
        return tuple((cp.mesh, cp.layout) for cp in self.assignment)

    def fixed(self) -> tuple[int, ...]:
        return tuple(cp.n_micro or cp.decode_batch for cp in self.assignment)

    def to_dict(self) -> dict:
        return {
            "format": "fastrlhf-plan", "version": FORMAT_VERSION, "algo": self.algo,
            "cluster": self.cluster.to_dict(),
            "workload": vars(self.workload).copy(),
            "models": {role: spec.to_dict() for role, spec in self.models.items()},
            "calls": [_call_dict(call, cp) for call, cp in zip(self.calls, self.assignment)],
            **self.extra,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)


def _call_dict(call: ModelCall, cp: CallPlan) -> dict:
    return {**call_to_dict(call), "mesh": {"start": cp.mesh.start, "size": cp.mesh.size},
            "dp": cp.layout.dp, "tp": cp.layout.tp, "pp": cp.layout.pp,
            "n_micro": cp.n_micro, "decode_batch": cp.decode_batch}


def plan_from_dict(data: dict) -> ExecutionPlan:
    """Inverse of `to_dict`; raises UserError naming the first bad field."""
    if not isinstance(data, dict) or data.get("format") != "fastrlhf-plan":
        raise UserError("not a fastrlhf plan (missing \"format\": \"fastrlhf-plan\")")
    try:
        cluster = cluster_from_dict(data["cluster"])
        workload = Workload(**data["workload"])
        models = {role: spec_from_dict(spec) for role, spec in data["models"].items()}
        calls = graph_from_dicts(data["calls"])
        assignment = [_call_plan(item) for item in data["calls"]]
    except (KeyError, TypeError, ValueError) as exc:
        raise UserError(f"malformed plan: bad or missing field {exc}") from None
    plan = ExecutionPlan(str(data.get("algo", "custom")), calls, models, cluster, workload,
                         assignment)
    validate_plan(plan)
    return plan


def _call_plan(item: dict) -> CallPlan:
    mesh = Mesh(int(item["mesh"]["start"]), int(item["mesh"]["size"]))
    layout = Layout(int(item["dp"]), int(item["tp"]), int(item["pp"]))
    return CallPlan(mesh, layout, int(item.get("n_micro", 0)), int(item.get("decode_batch", 0)))


def validate_plan(plan: ExecutionPlan) -> None:
    plan.workload.validate()
    gpn = plan.cluster.gpus_per_node
    for call, cp in zip(plan.calls, plan.assignment):
        if call.role not in plan.models:
            raise UserError(f"plan has no model spec for role {call.role!r}")
        if not is_valid_mesh(cp.mesh, plan.cluster):
            raise UserError(f"{call.name}: mesh {cp.mesh.start}+{cp.mesh.size} is not an aligned "
                            f"GPU subset of {plan.cluster.describe()}")
        if not is_valid_layout(cp.layout, cp.mesh, plan.models[call.role], gpn):
            raise UserError(f"{call.name}: layout dp={cp.layout.dp} tp={cp.layout.tp} "
                            f"pp={cp.layout.pp} does not fit mesh of {cp.mesh.size} GPUs / model")
        if cp.n_micro < 0 or cp.decode_batch < 0:
            raise UserError(f"{call.name}: n_micro and decode_batch must be >= 0")


def load_plan(path: str) -> ExecutionPlan:
    try:
        with open(path) as fh:
            data = json.load(fh)
    except OSError as exc:
        raise UserError(f"cannot read plan {path}: {exc.strerror}") from None
    except ValueError as exc:
        raise UserError(f"plan {path} is not valid JSON: {exc}") from None
    return plan_from_dict(data)
