"""List-scheduling simulator of several RLHF iterations (ReaLHF sec. 5.2).

Tasks: every call of every iteration (on its mesh) plus the augmented steps -- a reallocation
occupies the union of its source and destination meshes (NCCL kernels run on both), a reload its
destination mesh; data transfers are delays on dependency edges, occupying no GPU.
Dependencies: within an iteration, the producers of a call's inputs; across iterations, every call
of a trained model in iteration i+1 (or its reallocation) waits for that model's train call of
iteration i, and a train call waits for the other calls of its model in the same iteration (they
read the weights it overwrites).
Scheduling: greedy list scheduling -- repeatedly start the ready task that can start earliest
(ties: earlier iteration, then graph order; see below for K >= 1) once all its GPUs are free; no pre-emption, no
back-filling into idle gaps before already-placed tasks.
Iteration time = (end of iteration n - end of iteration 1) / (n - 1), the steady-state period;
accelerator-seconds per iteration = GPUs x iteration time (the whole cluster is reserved).

Asynchronous off-policy RLHF with bounded staleness K (`max_staleness`, Async RLHF, arXiv
2410.18252): the generate call of iteration i (or the reallocation / reload that feeds it) waits
for its model's train call of iteration i-1-K instead of i-1, so the rollout may use weights up
to K updates old and generation on its own GPUs overlaps the training of earlier iterations.
K = 0 is the synchronous schedule above, task for task. Only that one edge changes; every other
call keeps its dependencies, and for K >= 1 a train call also waits for its own train call of the
previous iteration (optimizer steps stay in order; for K = 0 this edge is implied by the others).
The first K+1 iterations generate with the initial weights (no wait at all), so they are the
warm-up, and the last K are the drain (their spans lack the weight reallocations for the
rollouts of iterations that are never simulated, so they would read short): iteration time =
(end of iteration n-K - end of iteration K+1) / (n - 2K - 1), which is the formula above for
K = 0; use n >> K. Left out: the learning-quality cost of staleness (no
importance weights, no effect on reward or convergence -- only time is simulated); the memory of
the K rollout batches in flight and of any weight snapshot (a reallocation ships whatever version
the home holds when it runs, at most K updates behind); the weight transfer to the rollout GPUs
is whatever the plan already charges (its reallocation step), not a separate broadcast.
Scheduling for K >= 1 differs in one tie-break: a rollout (the generate call and the step feeding
it) ranks with the iteration whose weights it uses, i-1-K, instead of its own iteration i. With
the plain rule it lost every tie to the scoring of iteration i-1 on the training GPUs (which its
reallocation also occupies), so the rollout GPUs idled until the trainer had finished a whole
further iteration; ranking by weight version ships a version as soon as it exists, as an async
trainer that syncs weights after each update does.
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
    rank: int | None = None  # tie-break rank among equally early tasks; None: the iteration

    @property
    def tie_rank(self) -> int:
        return self.iteration if self.rank is None else self.rank

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
    max_staleness: int = 0  # K: rollouts of iteration i may use the weights of train i-1-K

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


def build_tasks(ev: Evaluator, result: Evaluation, placements, n_iters: int,
                max_staleness: int = 0) -> list[Task]:
    """Tasks of `n_iters` iterations in graph order, with the dependencies of the module
    docstring (`max_staleness` relaxes only the generate call's weight edge)."""
    tasks: list[Task] = []
    call_id: dict[tuple[int, int], int] = {}
    step_for = {(s.consumer, s.kind): s for s in result.steps if s.kind != "transfer"}
    delays = {(s.producer, s.consumer): s.time for s in result.steps if s.kind == "transfer"}
    for it in range(n_iters):
        for est in result.calls:  # graph order is topological
            call_id[(it, est.index)] = _add_call(tasks, ev, placements, est, it, call_id,
                                                 step_for, delays, max_staleness)
    return tasks


def weights_lag(kind: str, max_staleness: int) -> int:
    """How many iterations back the train call is whose weights a call of `kind` waits for:
    K + 1 for generate (bounded staleness K), 1 for every other call."""
    return 1 + max_staleness if kind == "generate" else 1


def _add_call(tasks, ev, placements, est, it, call_id, step_for, delays, max_staleness=0) -> int:
    idx, call = est.index, ev.calls[est.index]
    mesh = placements[idx][0]
    deps = [(call_id[(it, d)], delays.get((d, idx), 0.0)) for d in ev.deps[idx]]
    home = ev.home[call.role]
    lag = weights_lag(call.kind, max_staleness)
    prev_train = call_id.get((it - lag, home)) if ev.trainable(call.role) else None
    if call.kind == "train":
        deps += [(call_id[(it, j)], 0.0) for j, c in enumerate(ev.calls)
                 if c.role == call.role and j != idx and (it, j) in call_id]
        if max_staleness > 0 and (it - 1, idx) in call_id:  # optimizer steps stay in order
            deps.append((call_id[(it - 1, idx)], 0.0))
    rank = it - lag if call.kind == "generate" and max_staleness > 0 else None  # weight version
    for kind in ("realloc", "reload"):
        step = step_for.get((idx, kind))
        if step is None:
            continue
        spans = _spans(mesh) + (_spans(step.src) if step.src is not None else ())
        step_deps = [(prev_train, 0.0)] if prev_train is not None else list(deps)
        tasks.append(Task(f"{kind}:{call.name}", it, kind, spans, step.time, len(tasks),
                          step_deps, rank=rank))
        deps.append((len(tasks) - 1, 0.0))
        prev_train = None
    if prev_train is not None and idx != home:
        deps.append((prev_train, 0.0))
    tasks.append(Task(call.name, it, call.kind, _spans(mesh), est.time, len(tasks), deps,
                      rank=rank))
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
            key = (start, task.tie_rank, order)
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


def simulate(ev: Evaluator, result: Evaluation, placements, n_iters: int = 3,
             max_staleness: int = 0) -> Simulation:
    """List-schedule `n_iters` iterations of an evaluated plan.

    `max_staleness` K >= 0: the generate call of iteration i may start with the weights of the
    train call of iteration i-1-K (module docstring: what changes and what is left out); K = 0
    is the synchronous simulation. K >= 1 needs n_iters >= 2K + 2 (K + 1 warm-up and K drain
    iterations are left out of the iteration time)."""
    if not result.feasible:
        raise ValueError(f"cannot simulate an infeasible plan: {result.reason}")
    if max_staleness < 0:
        raise ValueError(f"max_staleness must be >= 0, got {max_staleness}")
    if max_staleness > 0 and n_iters < 2 * max_staleness + 2:
        raise ValueError(f"max_staleness {max_staleness} needs at least {2 * max_staleness + 2} "
                         f"iterations ({max_staleness + 1} warm-up, {max_staleness} drain), "
                         f"got {n_iters}")
    tasks = build_tasks(ev, result, placements, n_iters, max_staleness)
    list_schedule(tasks, ev.cluster.n_gpus)
    ends = [max(t.end for t in tasks if t.iteration == it) for it in range(n_iters)]
    period = steady_period(ends, warmup=max_staleness + 1, drain=max_staleness)
    return Simulation(period, ends[0], ends[-1], tasks, ev.cluster.n_gpus, n_iters, max_staleness)


def steady_period(ends: list[float], warmup: int = 1, drain: int = 0) -> float:
    """Mean spacing of iteration ends after `warmup` iterations and before the last `drain`:
    (end of iteration n-drain - end of iteration warmup) / (n - drain - warmup), 1-based; with
    one iteration only, its end."""
    if len(ends) == 1:
        return ends[0]
    last = len(ends) - 1 - drain
    return (ends[last] - ends[warmup - 1]) / (last - warmup + 1)
