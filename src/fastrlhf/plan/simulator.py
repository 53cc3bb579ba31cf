"""List-scheduling simulator of several RLHF iterations (ReaLHF sec. 5.2).

Tasks: every call of every iteration (on its mesh) plus the augmented steps -- a reallocation
occupies the union of its source and destination meshes (NCCL kernels run on both), a reload its
destination mesh; data transfers are delays on dependency edges, occupying no GPU.
Dependencies: within an iteration, the producers of a call's inputs; across iterations, every call
of a trained model in iteration i+1 (or its reallocation) waits for that model's train call of
iteration i, and a train call waits for the other calls of its model in the same iteration (they
read the weights it overwrites).
Scheduling: greedy list scheduling -- repeatedly start the ready task that can start earliest
(ties: earlier iteration, then graph order; K >= 1 below) once all its GPUs are free; no
pre-emption, no back-filling into idle gaps before already-placed tasks.
Iteration time = (end of iteration n - end of iteration 1) / (n - 1), the steady-state period;
accelerator-seconds per iteration = GPUs x iteration time (the whole cluster is reserved).

Asynchronous off-policy RLHF with bounded staleness K (`max_staleness`; Async RLHF, arXiv
2410.18252). Dependency: the generate call of iteration i (or the reallocation / reload that
feeds it) waits for its model's train call of iteration i-1-K instead of i-1, so rollouts may use
weights up to K updates old and generation on its own GPUs overlaps the training of earlier
iterations. Every other call keeps its edges; for K >= 1 a train call also waits for its own
train call of iteration i-1 (optimizer steps stay in order; for K = 0 the other edges imply it).
K = 0 is the synchronous simulation above, task for task.
Scheduling with a bound K' >= 1 (K' = 0 keeps the plain rules):
- rank: a rollout (the generate call and the step feeding it) breaks ties as the iteration whose
  weights it uses, i-1-K', not as its own iteration i. With the plain tie-break it lost every tie
  to the scoring of iteration i-1 on the training GPUs (which its reallocation also occupies),
  so the rollout GPUs idled until the trainer had finished a further iteration; by weight
  version, a version is shipped as soon as it exists, as an async trainer that syncs weights
  after each update does;
- rank order (tried with and without): the earliest-starting ready task yields to a ready task
  of smaller rank that shares a GPU with it and could start before it ends, so a later
  iteration never delays an earlier one's ready call. Without it (7B GRPO, 8 H100: generate on
  GPUs 0-3, reference on GPU 4, reward on 6-7, train on all 8) the reference call of iteration
  i+1 took GPU 4 just before the train call of iteration i could start and delayed it by a
  whole reference call: 10.59 s per iteration at K = 1, against 8.35 s in rank order and
  12.83 s synchronous. Neither rule wins everywhere: on 1800 random plans x K = 1, 2, rank
  order was faster in 315 cases and slower in 1711 (the rest equal); keeping the faster gained
  over 1 % in 250 of 3600 cases, up to 47 %.
Kept: the fastest of the synchronous schedule and, for every K' = 1..K, the K'-stale schedule
with and without rank order. A bound K allows every schedule a smaller bound allows, and greedy
list scheduling is not monotone in its constraints (Graham's anomalies: the K-stale schedule in
rank order alone rose somewhere between K = 0 and 3 on 72 of those 1800 plans, by up to 29 %),
so the iteration time never rises with K. `Simulation.schedule_staleness` says which K' was kept.
Iteration time with K' >= 1: the first K'+1 iterations are the warm-up (their rollouts wait for
no training) and the last K' the drain (they lack the reallocations for rollouts of iterations
never simulated, so they read short); in between, the repeating spacing of the iteration ends
(`repeating_period`), or the busiest GPU's seconds of work per iteration if that is longer: a
rollout side that ran ahead in the warm-up leaves the other GPUs slack that can outlast the
simulated iterations (a random PPO plan still read 0.9 % faster than its busiest GPU can work
after 48), and no steady state beats that floor.
Left out: the learning-quality cost of staleness (no importance weights, no effect on reward or
convergence: only time is simulated); the memory of the rollout batches in flight and of any
weight snapshot (a reallocation ships whatever version the home holds when it runs, at most K
updates behind); the weight transfer to the rollout GPUs is whatever the plan already charges
(its reallocation step), not a separate broadcast.
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
    schedule_staleness: int = 0  # the bound K' <= K whose list schedule this is (`simulate`)

    @property
    def gpu_busy(self) -> list[float]:
        return gpu_busy(self.tasks, self.n_gpus)

    @property
    def busiest_gpu_seconds(self) -> float:
        """Seconds of work per iteration on the busiest GPU: no steady state is faster."""
        return max(self.gpu_busy) / self.n_iters

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


def list_schedule(tasks: list[Task], n_gpus: int, in_rank_order: bool = False) -> None:
    """Greedy list scheduling; sets start/end of every task.

    `in_rank_order` (the K >= 1 rule): the earliest-starting ready task yields to a ready task of
    smaller tie rank that shares a GPU with it and could start before it ends, so a later
    iteration never delays an earlier one's ready call (`_yield_to_earlier_rank`)."""
    gpu_free = [0.0] * n_gpus
    waiting = {t.order: len(t.deps) for t in tasks}
    users: dict[int, list[int]] = {}
    for t in tasks:
        for dep, _ in t.deps:
            users.setdefault(dep, []).append(t.order)
    ready = [t.order for t in tasks if not t.deps]
    while ready:
        best, best_key, starts = None, None, {}
        for order in ready:
            task = tasks[order]
            start = max(max(gpu_free[a:b]) for a, b in task.spans)
            for dep, delay in task.deps:
                start = max(start, tasks[dep].end + delay)
            starts[order] = start
            key = (start, task.tie_rank, order)
            if best_key is None or key < best_key:
                best, best_key = order, key
        if in_rank_order:
            best = _yield_to_earlier_rank(best, ready, tasks, starts)
        ready.remove(best)
        task = tasks[best]
        task.start, task.end = starts[best], starts[best] + task.duration
        for a, b in task.spans:
            gpu_free[a:b] = [task.end] * (b - a)
        for user in users.get(best, ()):
            waiting[user] -= 1
            if waiting[user] == 0:
                ready.append(user)


def _yield_to_earlier_rank(best: int, ready: list[int], tasks: list[Task], starts: dict) -> int:
    """While some ready task of smaller tie rank shares a GPU with `best` and could start
    before `best` would end, take the earliest-starting such task instead (ranks only fall,
    so this ends)."""
    while True:
        task = tasks[best]
        end = starts[best] + task.duration
        delayed = [o for o in ready if tasks[o].tie_rank < task.tie_rank and starts[o] < end
                   and _share_gpu(tasks[o], task)]
        if not delayed:
            return best
        best = min(delayed, key=lambda o: (starts[o], tasks[o].tie_rank, o))


def _share_gpu(a: Task, b: Task) -> bool:
    return any(x0 < y1 and y0 < x1 for x0, x1 in a.spans for y0, y1 in b.spans)


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
    train call of iteration i-1-K; K = 0 is the synchronous simulation. For K >= 1, the fastest
    of the schedules `schedule_with_staleness` gives for the bounds 0..K, with and without rank
    order (module docstring: why, and what is left out). K >= 1 needs n_iters >= 2K + 2
    (K + 1 warm-up and K drain iterations)."""
    if not result.feasible:
        raise ValueError(f"cannot simulate an infeasible plan: {result.reason}")
    if max_staleness < 0:
        raise ValueError(f"max_staleness must be >= 0, got {max_staleness}")
    if max_staleness > 0 and n_iters < 2 * max_staleness + 2:
        raise ValueError(f"max_staleness {max_staleness} needs at least {2 * max_staleness + 2} "
                         f"iterations ({max_staleness + 1} warm-up, {max_staleness} drain), "
                         f"got {n_iters}")
    best = schedule_with_staleness(ev, result, placements, n_iters, 0)
    for k in range(1, max_staleness + 1):
        for in_rank_order in (True, False):
            sim = schedule_with_staleness(ev, result, placements, n_iters, k, in_rank_order)
            if sim.iteration_time < best.iteration_time * (1 - 1e-9):  # ties: the smaller K'
                best = sim
    best.max_staleness = max_staleness
    return best


def schedule_with_staleness(ev: Evaluator, result: Evaluation, placements, n_iters: int,
                            max_staleness: int, in_rank_order: bool = True) -> Simulation:
    """One list schedule with the K-stale generate edge (K >= 1: rollouts ranked by weight
    version, and `in_rank_order` as in `list_schedule`) and its iteration time; K = 0 is the
    synchronous schedule (`in_rank_order` is ignored)."""
    tasks = build_tasks(ev, result, placements, n_iters, max_staleness)
    list_schedule(tasks, ev.cluster.n_gpus, in_rank_order=in_rank_order and max_staleness > 0)
    ends = [max(t.end for t in tasks if t.iteration == it) for it in range(n_iters)]
    sim = Simulation(0.0, ends[0], ends[-1], tasks, ev.cluster.n_gpus, n_iters, max_staleness,
                     max_staleness)
    if max_staleness == 0:
        sim.iteration_time = steady_period(ends)
    else:  # a window that reads faster than the busiest GPU can work has not settled yet
        window = repeating_period(ends[max_staleness:n_iters - max_staleness])
        sim.iteration_time = max(window, sim.busiest_gpu_seconds)
    return sim


def steady_period(ends: list[float]) -> float:
    """(end of the last iteration - end of the first) / (iterations - 1); with one, its end."""
    return (ends[-1] - ends[0]) / (len(ends) - 1) if len(ends) > 1 else ends[0]


def repeating_period(ends: list[float], max_cycle: int = 4, rel_tol: float = 1e-9) -> float:
    """Steady-state period from the iteration ends after the warm-up and before the drain.

    The spacings of iteration ends may repeat in a cycle of c > 1 iterations (a short and a long
    one alternating); a mean over a window that is not a whole number of cycles is then biased
    (by up to 11 % on random 4-call plans). So: the smallest c <= `max_cycle` for which the last
    min(3c, all) spacings (at least 2c) repeat with period c gives sum(last c spacings) / c; if
    none repeats, the mean spacing of the whole window."""
    gaps = [b - a for a, b in zip(ends, ends[1:])]
    if not gaps:
        return ends[0]
    tol = rel_tol * max(gaps)
    for c in range(1, max_cycle + 1):
        tail = gaps[-min(len(gaps), 3 * c):]
        repeats = all(abs(tail[j] - tail[j - c]) <= tol for j in range(c, len(tail)))
        if len(tail) >= 2 * c and repeats:
            return sum(gaps[-c:]) / c
    return sum(gaps) / len(gaps)
