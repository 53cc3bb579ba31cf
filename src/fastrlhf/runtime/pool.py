"""Decision logic of the balanced rollout pool: which worker gets which prompt, and which in-flight
sequences move where when generation runs uneven (RLHFless length-ranked assignment and
cut-and-migrate; RLHFSpec sample reallocation with the cheaper of KV shipping or re-prefill).

Pure Python, deterministic, no I/O: the driver measures, this module decides. Units are tokens
(work) and seconds (time); a worker's load is the decode tokens it still has to produce. Left out:
the batch size's effect on per-token speed (a token costs the same on every worker), prefix sharing
between prompts, and anything about *how* a sequence is shipped.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass


# ---------------------------------------------------------------------------- length prediction
class LengthPredictor:
    """Predicted response length (tokens) per prompt, from the lengths its earlier samples had.

    Per prompt an exponentially weighted moving average: first observation x1 gives m = x1, then
    m <- alpha * x + (1 - alpha) * m (alpha = 1: the last length only). An unknown prompt gets the
    running mean of every observation so far (of any prompt), or `default` before the first one.
    At most `max_prompts` prompts are kept; `observe` marks a prompt most recently used and the least
    recently observed one is dropped beyond the bound (it then falls back to the running mean,
    which keeps counting its observations). `predict` is read-only and changes no recency.
    """

    def __init__(self, alpha: float = 0.5, *, default: float, max_prompts: int = 100_000):
        if not (0.0 < alpha <= 1.0):
            raise ValueError(f"alpha must be in (0, 1], got {alpha!r}")
        if max_prompts < 1:
            raise ValueError(f"max_prompts must be >= 1, got {max_prompts!r}")
        self.alpha, self.default, self.max_prompts = float(alpha), _length(default), int(max_prompts)
        self._ewma: OrderedDict[str, float] = OrderedDict()  # oldest first
        self._total, self._count = 0.0, 0

    def __len__(self) -> int:
        return len(self._ewma)

    def observe(self, key: str, length: float) -> None:
        length = _length(length)
        old = self._ewma.pop(key, None)
        self._ewma[key] = length if old is None else self.alpha * length + (1.0 - self.alpha) * old
        self._total += length
        self._count += 1
        while len(self._ewma) > self.max_prompts:
            self._ewma.popitem(last=False)

    def predict(self, key: str) -> float:
        if key in self._ewma:
            return self._ewma[key]
        return self._total / self._count if self._count else self.default

    def state_dict(self) -> dict:
        """JSON-ready history: prompts oldest first, plus the running sum and count.
        alpha / default / max_prompts are configuration and are not saved."""
        return {"prompts": [[k, v] for k, v in self._ewma.items()], "total": self._total, "count": self._count}

    def load_state_dict(self, state: dict) -> None:
        """Replace the history by a saved one; beyond max_prompts the oldest prompts are dropped."""
        count = int(state["count"])
        if count < 0:
            raise ValueError(f"count must be >= 0, got {count}")
        prompts = OrderedDict((str(k), _length(v)) for k, v in state["prompts"])
        while len(prompts) > self.max_prompts:
            prompts.popitem(last=False)
        self._ewma, self._total, self._count = prompts, _length(state["total"]), count


def _length(x: float) -> float:
    x = float(x)
    if not (math.isfinite(x) and x >= 0.0):
        raise ValueError(f"a length must be finite and >= 0, got {x!r}")
    return x


# ---------------------------------------------------------------------------- prompt assignment
@dataclass(frozen=True)
class Item:
    """One prompt with its n samples; `cost` is its predicted work in tokens (see `prompt_cost`)."""
    key: int
    cost: float
    length: float = 0.0  # predicted tokens of its longest sample: the steps it keeps a worker busy


def prompt_cost(n_samples: int, predicted_tokens: float, prompt_tokens: int = 0,
                prefill_weight: float = 0.0) -> float:
    """cost = n * predicted response tokens + prefill_weight * prompt tokens.

    The prompt counts once (the n samples share its prefix) and weighs 0 by default: a prefill token
    is batched, compute-bound work, far cheaper than a memory-bound decode token."""
    return n_samples * predicted_tokens + prefill_weight * prompt_tokens


def assign_static(items: Sequence[Item], workers: int) -> list[list[int]]:
    """The naive split (baseline): contiguous chunks in input order, sizes differing by at most one,
    the first chunks one larger."""
    _check_assignment_input(items, workers)
    size, extra = divmod(len(items), workers)
    out, start = [], 0
    for w in range(workers):
        stop = start + size + (1 if w < extra else 0)
        out.append([it.key for it in items[start:stop]])
        start = stop
    return out


def worker_time(costs: Sequence[float], step_tokens: float = 0.0) -> float:
    """A worker's predicted finish time, in tokens of batched work: Σ tokens + step_tokens × the
    longest. Batched decoding costs a + b·B per step, so generating sequences of r_1 ≥ r_2 ≥ … takes
    Σ_t (a + b·#{r_i ≥ t}) = a·max r + b·Σ r; divided by b, step_tokens = a / b is the fixed cost
    of one engine step expressed in tokens (0 = time proportional to tokens only)."""
    return math.fsum(costs) + step_tokens * max(costs, default=0.0)


def assign_balanced(items: Sequence[Item], workers: int, capacity: int | None = None,
                    step_tokens: float = 0.0) -> list[list[int]]:
    """Balance tokens, not prompts: longest-processing-time-first greedy.

    Items by cost descending (ties: smaller key first), each to the worker with the least cost so far
    (ties: lower worker index) among those holding fewer than `capacity` items. Without a capacity
    the makespan is at most (4/3 - 1/(3m)) x optimal (Graham 1969). Keys per worker, in the order
    assigned (largest first: the order to submit them). With `step_tokens` > 0 (see `worker_time`)
    each item goes to the worker that would *finish* earliest with it, counting the longest sample a
    worker holds: the worker that gets the longest sample then gets less of the rest."""
    _check_assignment_input(items, workers)
    if capacity is not None and capacity * workers < len(items):
        raise ValueError(f"{len(items)} items do not fit {workers} workers x capacity {capacity}")
    out: list[list[int]] = [[] for _ in range(workers)]
    load, longest = [0.0] * workers, [0.0] * workers
    for it in sorted(items, key=lambda it: (-it.cost, it.key)):
        open_ = [w for w in range(workers) if capacity is None or len(out[w]) < capacity]
        # the worker that would finish earliest with it (step_tokens = 0: the least loaded, plain LPT)
        w = min(open_, key=lambda w: (load[w] + it.cost + step_tokens * max(longest[w], it.length), load[w], w))
        out[w].append(it.key)
        load[w] += it.cost
        longest[w] = max(longest[w], it.length)
    return out


def worker_costs(assignment: Sequence[Sequence[int]], items: Sequence[Item]) -> list[float]:
    """Total cost per worker of an assignment (its max is the makespan)."""
    cost = {it.key: it.cost for it in items}
    return [math.fsum(cost[k] for k in keys) for keys in assignment]


def _check_assignment_input(items: Sequence[Item], workers: int) -> None:
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    if len({it.key for it in items}) != len(items):
        raise ValueError("item keys must be unique")
    if any(not (math.isfinite(it.cost) and it.cost >= 0) for it in items):
        raise ValueError("item costs must be finite and >= 0")


# ---------------------------------------------------------------------------- migration planning
@dataclass(frozen=True)
class SeqLoad:
    seq_id: int
    generated: int      # tokens generated so far
    remaining: float    # predicted tokens still to generate, >= 1
    context: int        # prompt + generated tokens: what a migration must carry or recompute


@dataclass(frozen=True)
class WorkerLoad:
    worker: int
    sequences: list[SeqLoad]  # running and waiting
    free_slots: int

    @property
    def load(self) -> float:
        return math.fsum(s.remaining for s in self.sequences)


@dataclass(frozen=True)
class Move:
    seq_id: int
    src: int
    dst: int
    mode: str  # "kv" (ship the KV cache) or "reprefill" (send the tokens, recompute the KV)


@dataclass(frozen=True)
class MigrationCost:
    """Seconds to move one sequence: fixed_s + the cheaper of
    shipping its KV  (context x kv_bytes_per_token / bandwidth_bytes_per_s) and
    re-prefilling it (context x prefill_s_per_token). Ties go to "kv" (no recompute)."""
    kv_bytes_per_token: float
    bandwidth_bytes_per_s: float
    prefill_s_per_token: float
    fixed_s: float = 0.0

    def __post_init__(self):
        if self.bandwidth_bytes_per_s <= 0:
            raise ValueError("bandwidth_bytes_per_s must be > 0")
        if min(self.kv_bytes_per_token, self.prefill_s_per_token, self.fixed_s) < 0:
            raise ValueError("kv_bytes_per_token, prefill_s_per_token and fixed_s must be >= 0")

    def kv_seconds(self, seq: SeqLoad) -> float:
        return seq.context * self.kv_bytes_per_token / self.bandwidth_bytes_per_s

    def reprefill_seconds(self, seq: SeqLoad) -> float:
        return seq.context * self.prefill_s_per_token

    def mode(self, seq: SeqLoad) -> str:
        return "kv" if self.kv_seconds(seq) <= self.reprefill_seconds(seq) else "reprefill"

    def seconds(self, seq: SeqLoad) -> float:
        return self.fixed_s + min(self.kv_seconds(seq), self.reprefill_seconds(seq))


def plan_migration(loads: Sequence[WorkerLoad], threshold: float, cost: MigrationCost | None = None,
                   decode_s_per_token: float | None = None, step_tokens: float = 0.0) -> list[Move]:
    """Moves that even out the remaining work; one net move per sequence, never src == dst.

    Load = `worker_time` of a worker's remaining tokens (their sum, + step_tokens x the longest).
    Repeat while max load > (1 + threshold) x mean:
    - src = the most loaded worker (ties: first in `loads`); stop if a worker at the max holds fewer
      than 2 sequences (its lone sequence bounds the makespan; it cannot be split).
    - Moving r from load A (src) to load B helps iff B + r < A. Destinations: those with a free slot
      first (a full one can still queue the sequence), then the least loaded, then the first listed.
      For a destination, the sequence giving the lowest max(A - r, B + r), then the larger r (fewer
      moves), then the smaller seq_id. (The largest improving r alone may just swap the imbalance.)
    - With `cost` and `decode_s_per_token`, skip a move whose cost.seconds exceeds the time saved,
      taken as (A - max(A - r, B + r)) x decode_s_per_token: how much earlier the later of the two
      finishes; it overstates the gain when another worker ties at the max. Each step pays again.
    - A sequence planned earlier may move on again: its Move is re-targeted (dropped if it returns
      home), so without a cost model the plan stops only when no improving move is left.
    A destination's free slots shrink by the sequences it gains; a source gains none (a moved
    waiting sequence frees no slot). `mode` is the cost model's choice, else "reprefill" (needs no
    KV transport). Every step lowers the sorted load vector, so the loop ends; a cap of
    sequences x workers steps is a safety net only."""
    if not (threshold >= 0):
        raise ValueError(f"threshold must be >= 0, got {threshold!r}")
    home, seqs, free, order = _plan_state(loads)
    if len(order) < 2 or not seqs:
        return []
    held = {w: {i for i, at in home.items() if at == w} for w in order}

    def time_of(ids) -> float:
        return worker_time([seqs[i].remaining for i in ids], step_tokens)

    load = {w: time_of(held[w]) for w in order}
    moves: dict[int, Move] = {}
    for _ in range(len(seqs) * len(order)):
        peak = max(load.values())
        if peak <= (1.0 + threshold) * math.fsum(load.values()) / len(order):
            break
        tops = [w for w in order if load[w] == peak]
        if any(len(held[w]) < 2 for w in tops):
            break
        step = _best_step(tops[0], held, load, seqs, free, home, order, cost, decode_s_per_token, time_of)
        if step is None:
            break
        sid, src, dst = step
        held[src].discard(sid)
        held[dst].add(sid)
        load[src], load[dst] = time_of(held[src]), time_of(held[dst])
        if dst == home[sid]:
            moves.pop(sid, None)
        else:
            mode = cost.mode(seqs[sid]) if cost is not None else "reprefill"
            old = moves.get(sid)
            moves[sid] = Move(sid, home[sid], dst, mode) if old is None else Move(sid, old.src, dst, mode)
    return list(moves.values())


def _plan_state(loads: Sequence[WorkerLoad]):
    order = [w.worker for w in loads]
    if len(set(order)) != len(order):
        raise ValueError("worker ids must be unique")
    home, seqs, free = {}, {}, {}
    for w in loads:
        free[w.worker] = w.free_slots
        for s in w.sequences:
            if s.seq_id in seqs:
                raise ValueError(f"sequence {s.seq_id} appears twice")
            if not (math.isfinite(s.remaining) and s.remaining >= 1):
                raise ValueError(f"sequence {s.seq_id}: remaining must be finite and >= 1")
            home[s.seq_id], seqs[s.seq_id] = w.worker, s
    return home, seqs, free, order


def _best_step(src, held, load, seqs, free, home, order, cost, decode_s_per_token, time_of):
    """The first acceptable (seq_id, src, dst) in the preference order of `plan_migration`."""
    def slots_left(w):
        return free[w] - sum(1 for i in held[w] if home[i] != w)

    a, rank = load[src], {w: n for n, w in enumerate(order)}
    others = sorted((w for w in order if w != src), key=lambda w: (slots_left(w) <= 0, load[w], rank[w]))
    for dst in others:
        after = {i: (time_of(held[src] - {i}), time_of(held[dst] | {i})) for i in held[src]}
        cands = sorted((i for i in held[src] if after[i][1] < a),  # the moved-to worker must finish before src did
                       key=lambda i: (max(after[i]), -seqs[i].remaining, i))
        for i in cands:
            if cost is not None and decode_s_per_token is not None:
                saved = (a - max(after[i])) * decode_s_per_token
                if cost.seconds(seqs[i]) > saved:
                    continue
            return i, src, dst
    return None


def apply_moves(loads: Sequence[WorkerLoad], moves: Sequence[Move]) -> list[WorkerLoad]:
    """The loads after a plan: each moved sequence leaves its src for its dst; a destination's free
    slots shrink by one per sequence gained (not below 0)."""
    by_id = {s.seq_id: s for w in loads for s in w.sequences}
    dst_of = {m.seq_id: m.dst for m in moves}
    gained = {w.worker: 0 for w in loads}
    for m in moves:
        gained[m.dst] += 1
    out = []
    for w in loads:
        stay = [s for s in w.sequences if s.seq_id not in dst_of]
        come = [by_id[m.seq_id] for m in moves if m.dst == w.worker]
        out.append(WorkerLoad(w.worker, stay + come, max(0, w.free_slots - gained[w.worker])))
    return out


# ---------------------------------------------------------------------------- reported figures
def idle_seconds(busy: Sequence[float], wall: float) -> list[float]:
    """Per worker: wall - busy, floored at 0 (time it waited for the slowest one)."""
    return [max(0.0, wall - b) for b in busy]


def imbalance(loads: Sequence[float]) -> float:
    """max / mean - 1: 0 when perfectly even, (m - 1) when one of m workers does everything;
    0 for no workers or no work."""
    if not loads:
        return 0.0
    mean = math.fsum(loads) / len(loads)
    return max(loads) / mean - 1.0 if mean > 0 else 0.0
