"""`PoolCall`: one generate call of the rollout pool — an event loop over the workers' replies.

No barrier between workers: each worker runs `advance` (about `runtime.round_seconds` of engine
steps) and is given its next `advance` as soon as its reply is in, so a worker waits for the driver
only while the driver reads its own reply. Replies are handled as they come (`ray.wait`):

    advance → finished sequences (accepted once per seq_id), the worker's load, its busy seconds;
              complete prompt groups go to `on_groups`; the worker continues while it has work;
              then, with no migration in flight, the pool may plan one (`plan_migration`)
    take    → the sequences a loaded worker gave up (those not finished meanwhile), sent on: `add`
    add     → the receiving worker's load; it is given an `advance` if it had none running

A worker whose call fails because it died (or was restarted by Ray: `WorkerRestarted`) leaves the
call; every sequence it held and the pool had not collected is re-run from scratch on the others
(same seed: the same sample). Ownership is what the driver last sent: a sequence is "on" the worker
it was assigned, moved or re-run to, and the first finished copy of a seq_id wins (a re-run can
never produce a different sample, so a late duplicate is only dropped).

Idle time per worker = the slowest worker's busy (engine) seconds − its own (rollout_pool.CallStats).
"""

from __future__ import annotations

from fastrlhf.errors import WorkerLost
from fastrlhf.rollout.sequence import Sequence
from fastrlhf.runtime.pool import Item, MigrationCost, SeqLoad, WorkerLoad, assign_balanced, plan_migration


def is_worker_gone(exc: BaseException) -> bool:
    """The worker died, or was restarted by Ray and lost the call's engine state."""
    import ray

    from fastrlhf.runtime.rollout_worker import WorkerRestarted

    if isinstance(exc, (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError)):
        return True
    return isinstance(exc, ray.exceptions.RayTaskError) and isinstance(getattr(exc, "cause", None), WorkerRestarted)


class PoolCall:
    def __init__(self, pool, call_id: int, template: dict[int, Sequence], shares: list[list[int]], n: int,
                 texts: list[str], stats, on_groups=None):
        self.pool, self.call, self.template, self.n, self.texts = pool, call_id, template, n, texts
        self.stats, self.on_groups = stats, on_groups
        self.workers = pool.workers
        self.owner = {k * n + j: w for w, keys in enumerate(shares) for k in keys for j in range(n)}
        self.live = set(range(len(self.workers)))
        self.finished: dict[int, Sequence] = {}
        self.group_left = {k: n for k in range(len(texts))}
        self.loads: dict[int, dict] = {}
        self.inflight: dict = {}  # ObjectRef -> (kind, worker, extra)
        self.advancing: set[int] = set()
        self.migrating = 0  # take / add replies outstanding

    # ------------------------------------------------------------------ the loop
    def run(self, start) -> dict[int, Sequence]:
        """`start(worker)` → the ObjectRef of its `start` call; returns seq_id → finished sequence."""
        import ray

        for w in sorted(self.live):
            self.inflight[start(w)] = ("start", w, None)
        while self.owner or self.inflight:
            if not self.inflight:
                raise RuntimeError(f"rollout pool: sequences {sorted(self.owner)[:5]} are owned by no running call")
            ready, _ = ray.wait(list(self.inflight), num_returns=1)
            kind, w, extra = self.inflight.pop(ready[0])
            try:
                reply = ray.get(ready[0])
            except Exception as exc:  # noqa: BLE001 - only a lost worker is handled here
                if not is_worker_gone(exc):
                    raise
                if kind == "take":  # the source is gone: its sequences are re-run; the add never happens
                    self.migrating -= 1
                elif kind == "add":
                    self.migrating -= 1
                self._lose(w)
                continue
            getattr(self, f"_on_{kind}")(w, reply, extra)
        return self.finished

    def _advance(self, w: int) -> None:
        if w in self.live and w not in self.advancing:
            self.advancing.add(w)
            self.inflight[self.workers[w].advance.remote(self.call, self.pool.runtime.round_seconds)] = ("advance", w, None)

    def _has_work(self, w: int) -> bool:
        load = self.loads.get(w)
        return load is not None and (load["waiting"] + load["running"]) > 0

    # ------------------------------------------------------------------ replies
    def _on_start(self, w: int, load: dict, _) -> None:
        self.loads[w] = load
        self._advance(w)

    def _on_advance(self, w: int, reply, _) -> None:
        done, load, busy = reply
        self.pool.step_cost.add(load.get("steps", 0), load.get("tokens", 0), busy)
        self.advancing.discard(w)
        self.stats.busy[w] += busy
        self.stats.rounds += 1
        self.loads[w] = load
        complete = []
        for seq in done:
            if seq.seq_id in self.finished:
                continue  # a late copy of a re-run sequence: the same sample, already collected
            self.finished[seq.seq_id] = seq
            self.stats.generated += len(seq.token_ids)
            self.owner.pop(seq.seq_id, None)
            self.group_left[seq.prompt_index] -= 1
            if self.group_left[seq.prompt_index] == 0:
                complete.append(seq.prompt_index)
        if complete and self.on_groups is not None:
            self.on_groups([self.finished[k * self.n + j] for k in sorted(complete) for j in range(self.n)])
        if self._has_work(w):
            self._advance(w)
        if self.owner and not self.migrating and self.pool.runtime.migrate_threshold > 0 and len(self.live) > 1:
            self._plan()

    def _on_take(self, src: int, taken: list, route) -> None:
        dst, _ = route
        self.migrating -= 1
        taken = [s for s in taken if s.seq_id not in self.finished]
        if not taken or dst not in self.live:
            if taken:  # the destination was lost meanwhile: these go where its others went
                self._rerun([s.seq_id for s in taken], fresh=False, sequences=taken)
            return
        for seq in taken:
            self.owner[seq.seq_id] = dst
        self.migrating += 1
        self.inflight[self.workers[dst].add.remote(self.call, taken)] = ("add", dst, len(taken))
        self.stats.migrated += len(taken)
        self.stats.migrated_kv += sum(s.kv is not None for s in taken)

    def _on_add(self, w: int, load: dict, _) -> None:
        self.migrating -= 1
        self.loads[w] = load
        if self._has_work(w):
            self._advance(w)

    # ------------------------------------------------------------------ migration
    def _plan(self) -> None:
        """Plan moves from the latest loads; send each (src, dst, carry) group as one `take`."""
        pool = self.pool
        worker_loads = []
        for w in sorted(self.live):
            load = self.loads.get(w)
            if load is None:
                return
            seqs = [SeqLoad(s["seq_id"], s["generated"],
                            max(1.0, pool.predictor.predict(self.texts[s["prompt_index"]]) - s["generated"]),
                            s["prompt_len"] + s["generated"])
                    for s in load["sequences"] if self.owner.get(s["seq_id"]) == w]  # loads may be a round stale
            worker_loads.append(WorkerLoad(w, seqs, load["free_slots"]))
        cost = MigrationCost(pool.kv_bytes_per_token, pool.bandwidth, pool.prefill_s_per_token)
        fit = pool.step_cost.coefficients()
        if fit is not None:  # seconds per token of batched work
            decode_s_per_token = fit[1]
        else:
            in_flight = sum(s.generated for wl in worker_loads for s in wl.sequences)
            decode_s_per_token = sum(self.stats.busy) / max(self.stats.generated + in_flight, 1)
        moves = plan_migration(worker_loads, pool.runtime.migrate_threshold, cost, decode_s_per_token,
                               step_tokens=pool.step_cost.step_tokens)
        forced = {"kv": True, "tokens": False}.get(pool.runtime.migrate_with)
        routes: dict[tuple[int, int, bool], list[int]] = {}
        for m in moves:
            routes.setdefault((m.src, m.dst, m.mode == "kv" if forced is None else forced), []).append(m.seq_id)
        for (src, dst, with_kv), ids in routes.items():
            self.migrating += 1
            self.inflight[self.workers[src].take.remote(self.call, ids, with_kv)] = ("take", src, (dst, with_kv))

    # ------------------------------------------------------------------ faults
    def _lose(self, w: int) -> None:
        if w not in self.live:
            return
        self.live.discard(w)
        self.advancing.discard(w)
        self.pool.versions[w] = None  # restarted by Ray with fresh weights: re-synced before it generates again
        self.stats.restarts += 1
        if not self.live:
            raise WorkerLost(f"every rollout worker died (the last was worker {w})")
        self._rerun(sorted(i for i, at in self.owner.items() if at == w), fresh=True)

    def _rerun(self, ids: list[int], fresh: bool, sequences: list | None = None) -> None:
        """Send sequences to the live workers, balanced by count: from scratch (`fresh`: their worker
        was lost) or as they are (taken sequences whose destination was lost)."""
        if not ids:
            return
        by_id = {s.seq_id: s for s in sequences or []}
        targets = sorted(self.live)
        for dst, part in zip(targets, assign_balanced([Item(i, 1.0) for i in ids], len(targets))):
            if not part:
                continue
            seqs = [_fresh(self.template[i]) if fresh else by_id[i] for i in part]
            for i in part:
                self.owner[i] = dst
            self.migrating += 1
            self.inflight[self.workers[dst].add.remote(self.call, seqs)] = ("add", dst, len(seqs))
            if fresh:
                self.stats.rerun += len(seqs)


def _fresh(seq: Sequence) -> Sequence:
    """A not-yet-started copy of a sequence (re-run after its worker was lost)."""
    return Sequence(seq.seq_id, list(seq.prompt_ids), seq.prompt_index, seq.sample_index, seq.seed)
