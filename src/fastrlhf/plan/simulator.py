"""List-scheduling simulator of several RLHF iterations (ReaLHF sec. 5.2).

Tasks: every call of every iteration (on its mesh) plus the augmented steps -- a reallocation
occupies the union of its source and destination meshes (NCCL kernels run on both), a reload its
destination mesh; data transfers are delays on dependency edges, occupying no GPU.
Dependencies: within an iteration, the producers of a call's inputs; across iterations, every call
of a trained model in iteration i+1 (or its reallocation) waits for that model's train call of
iteration i, and a train call waits for the other calls of its model in the same iteration (they
read the weights it overwrites).
Scheduling: greedy list scheduling -- repeatedly start the ready task that can start earliest
(ties: earlier iteration, then graph order) once all its GPUs are free; no pre-emption, no
back-filling into idle gaps before already-placed tasks.
Iteration time = (end of iteration n - end of iteration 1) / (n - 1), the steady-state period;
accelerator-seconds per iteration = GPUs x iteration time (the whole cluster is reserved).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from fastrlhf.plan.evaluate import Evaluation, Evaluator


@dataclass
class Task:
    name: str
    iteration: int
    kind: str  # generate / inference / train / realloc / reload
    spans: tuple[tuple[int, int], ...]  # GPU id ranges [a, b) the task occupies
    duration: float
    order: int
    deps: list[tuple[int, float]] = field(default_factory=list)  # (task id, edge delay)
    start: float = 0.0
    end: float = 0.0

    @property
    def gpus(self) -> tuple[int, ...]:
        return tuple(sorted({g for a, b in self.spans for g in range(a, b)}))


@dataclass
class Simulation:
    iteration_time: float
    first_iteration: float
    makespan: float
    tasks: list[Task]
    n_gpus: int
    n_iters: int

    @property
    def gpu_busy(self) -> list[float]:
        return gpu_busy(self.tasks, self.n_gpus)

    @property
    def utilisation(self) -> list[float]:
        return [busy / self.makespan if self.makespan else 0.0 for busy in self.gpu_busy]

    @property
    def accelerator_seconds(self) -> float:
        return len(self.gpu_busy) * self.iteration_time

    @property
    def busy_accelerator_seconds(self) -> float:
        return sum(self.gpu_busy) / self.n_iters


def build_tasks(ev: Evaluator, result: Evaluation, placements, n_iters: int) -> list[Task]:
    tasks: list[Task] = []
    call_id: dict[tuple[int, int], int] = {}
    step_for = {(s.consumer, s.kind): s for s in result.steps if s.kind != "transfer"}
    delays = {(s.producer, s.consumer): s.time for s in result.steps if s.kind == "transfer"}
    for it in range(n_iters):
        for est in result.calls:  # graph order is topological
            call_id[(it, est.index)] = _add_call(tasks, ev, placements, est, it, call_id,
                                                 step_for, delays)
    return tasks


def _add_call(tasks, ev, placements, est, it, call_id, step_for, delays) -> int:
    idx, call = est.index, ev.calls[est.index]
    mesh = placements[idx][0]
    deps = [(call_id[(it, d)], delays.get((d, idx), 0.0)) for d in ev.deps[idx]]
    home = ev.home[call.role]
    prev_train = call_id.get((it - 1, home)) if ev.trainable(call.role) else None
    if call.kind == "train":
        deps += [(call_id[(it, j)], 0.0) for j, c in enumerate(ev.calls)
                 if c.role == call.role and j != idx and (it, j) in call_id]
    for kind in ("realloc", "reload"):
        step = step_for.get((idx, kind))
        if step is None:
            continue
        spans = _spans(mesh) + (_spans(step.src) if step.src is not None else ())
        step_deps = [(prev_train, 0.0)] if prev_train is not None else list(deps)
        tasks.append(Task(f"{kind}:{call.name}", it, kind, spans, step.time, len(tasks),
                          step_deps))
        deps.append((len(tasks) - 1, 0.0))
        prev_train = None
    if prev_train is not None and idx != home:
        deps.append((prev_train, 0.0))
    tasks.append(Task(call.name, it, call.kind, _spans(mesh), est.time, len(tasks), deps))
    return len(tasks) - 1


def _spans(mesh) -> tuple[tuple[int, int], ...]:
    return ((mesh.start, mesh.start + mesh.size),)


def list_schedule(tasks: list[Task], n_gpus: int) -> None:
    """Greedy list scheduling; sets start/end of every task."""
    gpu_free = [0.0] * n_gpus
    waiting = {t.order: len(t.deps) for t in tasks}
    users: dict[int, list[int]] = {}
    for t in tasks:
        for dep, _ in t.deps:
            users.setdefault(dep, []).append(t.order)
    ready = [t.order for t in tasks if not t.deps]
    while ready:
        best, best_key = None, None
        for order in ready:
            task = tasks[order]
            start = max(max(gpu_free[a:b]) for a, b in task.spans)
            for dep, delay in task.deps:
                start = max(start, tasks[dep].end + delay)
            key = (start, task.iteration, order)
            if best_key is None or key < best_key:
                best, best_key = order, key
        ready.remove(best)
        task = tasks[best]
        task.start, task.end = best_key[0], best_key[0] + task.duration
        for a, b in task.spans:
            gpu_free[a:b] = [task.end] * (b - a)
        for user in users.get(best, ()):
            waiting[user] -= 1
            if waiting[user] == 0:
                ready.append(user)


def gpu_busy(tasks: list[Task], n_gpus: int) -> list[float]:
    busy = [0.0] * n_gpus
    for task in tasks:
        for g in task.gpus:
            busy[g] += task.duration
    return busy


def simulate(ev: Evaluator, result: Evaluation, placements, n_iters: int = 3) -> Simulation:
    if not result.feasible:
        raise ValueError(f"cannot simulate an infeasible plan: {result.reason}")
    tasks = build_tasks(ev, result, placements, n_iters)
    list_schedule(tasks, ev.cluster.n_gpus)
    ends = [max(t.end for t in tasks if t.iteration == it) for it in range(n_iters)]
    period = (ends[-1] - ends[0]) / (n_iters - 1) if n_iters > 1 else ends[0]
    return Simulation(period, ends[0], ends[-1], tasks, ev.cluster.n_gpus, n_iters)
