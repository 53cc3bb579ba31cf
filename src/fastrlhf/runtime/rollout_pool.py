"""`RolloutPool`: the actor's `generate` call spread over N rollout workers (Ray actors).

One call (RLHFless §3.2 + RLHFSpec §1; the event loop itself is runtime/pool_call.py):
1. **Assign** prompts to workers (runtime/pool.py): `runtime.balance=tokens` balances predicted
   finish times — n × the prompt's EWMA length (the running mean for a new prompt) plus the fitted
   fixed cost of the engine steps its longest sample keeps a worker busy (`StepCostFit`) — greedily, longest first;
   `static` is the equal-count split in order.
2. **Advance**: every live worker runs its engine for about `runtime.round_seconds` at a time
   (`advance`) and gets its next advance as soon as its reply is read — no barrier between workers;
   the pool collects the finished sequences, hands each *complete prompt group* to `on_groups`
   (streaming scoring, runtime/executor.py) and adds up each worker's busy time.
3. **Migrate** when the predicted remaining tokens are unbalanced past `runtime.migrate_threshold`
   (`plan_migration`): in-flight sequences leave the loaded worker (`take`) and continue on the light
   one (`add`) with the same counter-based random stream — so a migrated sample is the sample it
   would have been. Each move ships either the sequence's K/V rows (context × KV bytes per token /
   the object-store bandwidth the last weight sync measured) or its tokens for a re-prefill
   (context × the worker's profiled prefill seconds per token), whichever the cost model says is
   cheaper; a move whose transfer costs more than the decode time it saves is not made.
4. **Faults**: a worker that dies mid-call loses nothing the pool has not collected: every sequence
   it held is re-run from scratch on the surviving workers (same seed → the same sample), Ray
   restarts the actor (`runtime.max_restarts`) and the pool re-syncs its weights before it generates
   again. Finished sequences are accepted once per (prompt, sample): none lost, none duplicated.

Sequence identity is seq_id = prompt key × n + sample index, where the prompt key is the prompt's
row in the step's batch and the seed is sequence_seed(step seed, key, sample): the same on every
worker, so N workers produce the one-worker tokens.

Idle time (the figure the balance benchmarks report): per worker, the slowest worker's engine time
minus its own — the time it waited for the slowest; the call's overhead (wall − the slowest's
engine time) is logged apart.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from fastrlhf.config import Config
from fastrlhf.errors import WorkerLost
from fastrlhf.rollout.engine import sequence_seed
from fastrlhf.rollout.sampler import SamplingParams
from fastrlhf.rollout.sequence import Sequence
from fastrlhf.runtime.pool import Item, LengthPredictor, assign_balanced, assign_static, idle_seconds, prompt_cost
from fastrlhf.runtime.pool_call import PoolCall, is_worker_gone
from fastrlhf.runtime.rollout_worker import RolloutWorker


DEFAULT_BANDWIDTH = 1e9  # bytes/s object-store transfer before the first sync has measured one


@dataclass
class CallStats:
    """What one generate call measured (logged as rollout/*)."""

    wall: float = 0.0
    busy: list[float] = field(default_factory=list)
    rounds: int = 0  # advance replies, over all workers
    migrated: int = 0
    migrated_kv: int = 0
    generated: int = 0  # tokens of the sequences finished so far (the decode cost estimate)
    rerun: int = 0
    restarts: int = 0

    def metrics(self) -> dict[str, float]:
        """idle = Σ_w (slowest worker's busy − busy_w): the time workers waited for the slowest one;
        overhead = wall − the slowest worker's busy: the call's own cost (start, replies, return),
        during which no worker could have worked."""
        slowest = max(self.busy, default=0.0)
        idle = idle_seconds(self.busy, slowest)
        return {"rollout/idle_s": sum(idle), "rollout/idle_max_s": max(idle, default=0.0),
                "rollout/idle_fraction": sum(idle) / max(slowest * len(self.busy), 1e-9),
                "rollout/overhead_s": max(0.0, self.wall - slowest),
                "rollout/rounds": float(self.rounds), "rollout/migrated": float(self.migrated),
                "rollout/migrated_kv": float(self.migrated_kv),
                "rollout/rerun": float(self.rerun), "rollout/worker_restarts": float(self.restarts)}


class StepCostFit:
    """Least-squares fit of busy seconds = a · engine steps + b · tokens over every advance reply:
    batched decoding costs a + b·B per step. `step_tokens` = a / b is the fixed cost of a step in
    tokens (runtime/pool.worker_time), 0 until 8 replies make the fit well-posed."""

    def __init__(self):
        self.sums = [0.0] * 5  # Σ s², Σ s·k, Σ k², Σ s·y, Σ k·y
        self.count = 0

    def add(self, steps: int, tokens: int, seconds: float) -> None:
        if steps <= 0:
            return
        for i, v in enumerate((steps * steps, steps * tokens, tokens * tokens, steps * seconds, tokens * seconds)):
            self.sums[i] += v
        self.count += 1

    def coefficients(self) -> tuple[float, float] | None:
        ss, sk, kk, sy, ky = self.sums
        det = ss * kk - sk * sk
        if self.count < 8 or det <= 1e-9 * ss * kk:
            return None
        a, b = (kk * sy - sk * ky) / det, (ss * ky - sk * sy) / det
        return (a, b) if b > 0 else None

    @property
    def step_tokens(self) -> float:
        fit = self.coefficients()
        return 0.0 if fit is None else min(max(fit[0] / fit[1], 0.0), 10_000.0)


class RolloutPool:
    def __init__(self, config: Config, rollout_dtype: str):
        import ray

        rt = config.runtime
        self.config, self.runtime = config, rt
        actor = ray.remote(RolloutWorker).options(num_cpus=rt.rollout_cpus, num_gpus=rt.rollout_gpus,
                                                  max_restarts=rt.max_restarts, max_task_retries=0)
        self.workers = [actor.remote(config.to_dict(), i, rt.rollout_cpus, rollout_dtype)
                        for i in range(rt.rollout_workers)]
        infos = ray.get([w.info.remote() for w in self.workers])  # wait for the engines here: set-up, not the first sync
        self.kv_bytes_per_token = infos[0]["kv_bytes_per_token"]
        self.prefill_s_per_token = max(i["prefill_s_per_token"] for i in infos)
        self.bandwidth = DEFAULT_BANDWIDTH  # bytes/s between workers; replaced by each sync's measurement
        self.versions: list[int | None] = [None] * len(self.workers)
        self.predictor = LengthPredictor(alpha=0.5, default=config.rollout.max_new_tokens / 2)
        self.last = CallStats()
        self.call_id = 0
        self.step_cost = StepCostFit()
        self.sync_log: list[tuple[int, float]] = []  # (bytes, seconds) of every worker's last loads

    # ------------------------------------------------------------------ weights
    def sync(self, version: int, publish) -> dict[str, float]:
        """Bring every worker to the trainer's committed `version`. `publish()` → (version, refs,
        bytes, pack seconds) packs it on trainer rank 0; it runs only when some worker is behind (a
        new version, a restarted worker, a resume)."""
        targets = [i for i, v in enumerate(self.versions) if v != version]
        if not targets:
            return {}
        started = time.perf_counter()
        published, refs, nbytes, pack_s = publish()
        if published != version:
            raise RuntimeError(f"weight sync: the trainer published version {published}, expected {version}")
        calls = {i: self.workers[i].load_weights.remote(version, refs) for i in targets}
        for i, ref in calls.items():
            self._await_load(i, ref, version, refs)
            self.versions[i] = version
        wall = time.perf_counter() - started
        self.sync_log.append((nbytes, wall))
        self.bandwidth = nbytes * len(targets) / max(wall, 1e-9)  # what moving K/V through the object store gets
        return {"sync/mb": nbytes / 1e6, "sync/seconds": wall, "sync/pack_seconds": pack_s,
                "sync/workers": float(len(targets)), "sync/mb_per_s": nbytes * len(targets) / 1e6 / max(wall, 1e-9)}

    def _await_load(self, i: int, ref, version: int, refs: list, patience: float = 120.0) -> None:
        """Wait for worker i's weight load; a worker Ray is still restarting is retried until
        `patience` seconds have passed, then the run stops (WorkerLost) naming it."""
        import ray

        deadline = time.perf_counter() + patience
        while True:
            try:
                ray.get(ref)
                return
            except Exception as exc:  # noqa: BLE001 - only a dead / restarting worker is retried
                if not is_worker_gone(exc):
                    raise
                if time.perf_counter() > deadline:
                    raise WorkerLost(f"rollout worker {i} died and was not back after {patience:.0f} s "
                                     f"(runtime.max_restarts={self.runtime.max_restarts})") from None
                time.sleep(0.5)
                ref = self.workers[i].load_weights.remote(version, refs)

    # ------------------------------------------------------------------ generate
    def generate(self, prompts: list[list[int]], texts: list[str], params: SamplingParams, version: int,
                 on_groups=None) -> list[Sequence]:
        """n samples of every prompt (key = its index) → finished sequences ordered by (prompt, sample)."""
        started = time.perf_counter()
        n = params.n
        self.call_id += 1
        call = self.call_id
        self.last = stats = CallStats(busy=[0.0] * len(self.workers))
        template = {k * n + j: Sequence(k * n + j, list(p), k, j, sequence_seed(params.seed, k, j))
                    for k, p in enumerate(prompts) for j in range(n)}
        shares = self._assign(prompts, texts, n)
        reserve = (min(self.config.rollout.num_slots, len(template)), max(len(p) for p in prompts) + params.max_new_tokens)
        run = PoolCall(self, call, template, shares, n, texts, stats, on_groups)
        finished = run.run(lambda w: self.workers[w].start.remote(
            call, [prompts[k] for k in shares[w]], shares[w], params, version, reserve))
        for w in run.live:
            self.workers[w].finish.remote()
        for k, text in enumerate(texts):
            for j in range(n):
                self.predictor.observe(text, len(finished[k * n + j].token_ids))
        stats.wall = time.perf_counter() - started
        return [finished[i] for i in sorted(finished)]

    def generate_batch(self, prompts: list[str], tokenizer, params: SamplingParams, version: int,
                       on_groups=None):
        """`generate` from prompt texts → the generate call's output batch and stats
        (train/workers.rollout_batch + this call's rollout/* metrics)."""
        from fastrlhf.train.workers import rollout_batch

        started = time.perf_counter()
        seqs = self.generate([tokenizer.encode_prompt(p) for p in prompts], prompts, params, version, on_groups)
        out, stats = rollout_batch(seqs, tokenizer, time.perf_counter() - started)
        stats.update(self.last.metrics())
        return out, stats

    def _assign(self, prompts: list[list[int]], texts: list[str], n: int) -> list[list[int]]:
        workers = len(self.workers)
        predicted = [self.predictor.predict(t) for t in texts]
        items = [Item(k, prompt_cost(n, predicted[k], len(p)), predicted[k]) for k, p in enumerate(prompts)]
        if self.runtime.balance == "static":
            return assign_static(items, workers)
        return assign_balanced(items, workers, step_tokens=self.step_cost.step_tokens)

    def close(self) -> None:
        import ray

        for w in self.workers:
            ray.kill(w, no_restart=True)
