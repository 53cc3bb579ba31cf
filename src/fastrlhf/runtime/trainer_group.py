"""The trainer group: M data-parallel trainer ranks as Ray actors, one torch.distributed process group.

Each rank (`TrainerRank`, a Ray actor) builds the run's full `TrainingState` (train/state.py) without
a rollout engine: the policy with its AdamW and schedule, the step transaction, and — colocated with
the trainer, as by default in every peer — the reference, the reward and the PPO critic. Ranks form
one process group (gloo on CPU, nccl on CUDA) for the gradient all-reduce of train/data_parallel.py.

Who does what (`TrainerGroup`):
- `train` calls and the step transaction (begin / commit / rollback), `set_step`, `load`: every rank,
  in parallel (the collectives need all of them);
- inference calls (reference, reward, critic values), `save`, `eval_metrics`, `export` and the weight
  `publish`: rank 0 only — every rank holds the same weights, so one is enough.

Rendezvous: rank 0 opens a `TCPStore` on port 0 and reports the port the kernel chose; the other
ranks connect to it — no "find a free port, close it, hope" race. A rank that dies raises
`WorkerLost` naming it; a process group cannot be rejoined, so the run stops (its last checkpoint
is intact) rather than continuing with M − 1 ranks.

With `runtime.scoring=separate` the reference and the reward run on one more actor of the same
kind (a `TrainerGroup(scoring=True)`, which serves only inference calls; it builds the same state,
so it also holds an unused optimizer — simple, at the cost of that memory).

Left out: placement groups across nodes (ranks are placed by Ray's default scheduler), restarting a
trainer rank in place, sharded (FSDP) state.
"""

from __future__ import annotations

import socket
from datetime import timedelta

import torch

from fastrlhf.config import Config, config_from_dict
from fastrlhf.errors import WorkerLost


class TrainerRank:
    """The body of one trainer-rank actor (made a Ray actor by `TrainerGroup`)."""

    def __init__(self, config: dict, schedule_steps: int, rank: int, world: int, threads: int):
        torch.set_num_threads(threads)
        self.config, self.schedule_steps = config_from_dict(config), schedule_steps
        self.rank, self.world = rank, world
        self.store = None
        self.state = None

    def open_store(self) -> tuple[str, int]:
        """Rank 0: the rendezvous store on a port the kernel picks → (host, port)."""
        import torch.distributed as dist

        host = socket.gethostbyname(socket.gethostname()) if self.world > 1 else "127.0.0.1"
        self.store = dist.TCPStore(host, 0, self.world, is_master=True, wait_for_workers=False,
                                   timeout=timedelta(seconds=300))
        return host, self.store.port

    def setup(self, host: str, port: int) -> dict:
        """Join the process group (M > 1), then build the rank's training state."""
        from fastrlhf.train.state import TrainingState

        data_parallel = None
        if self.world > 1:
            import torch.distributed as dist

            from fastrlhf.train.data_parallel import DataParallel

            if self.store is None:
                self.store = dist.TCPStore(host, port, self.world, is_master=False, timeout=timedelta(seconds=300))
            backend = "nccl" if self.config.train.device == "cuda" or (
                self.config.train.device == "auto" and torch.cuda.is_available()) else "gloo"
            dist.init_process_group(backend, store=self.store, rank=self.rank, world_size=self.world,
                                    timeout=timedelta(seconds=self.config.train.hang_timeout))
            data_parallel = DataParallel(self.rank, self.world)
        self.state = TrainingState(self.config, self.schedule_steps, with_engine=False, data_parallel=data_parallel)
        return {"rollout_dtype": str(self.state.precision.dtype).removeprefix("torch."),
                "kl_from_samples": self.state.kl_from_samples, "threads": torch.get_num_threads()}

    def call(self, role: str, kind: str, batch):
        """A model call on one of this rank's workers (`workers[role].kind(batch)`)."""
        return getattr(self.state.workers[role], kind)(batch)

    def method(self, name: str, *args):
        """A TrainingState method (begin, commit, rollback, set_step, save, load, eval_metrics, ...)."""
        return getattr(self.state, name)(*args)

    def version(self) -> int:
        return self.state.policy_version

    def publish(self, bucket_mb: int) -> tuple[int, list, int, float]:
        """The committed policy as checksummed buckets in the object store → (version, refs, bytes,
        seconds to pack and put)."""
        from fastrlhf.runtime.weights import publish

        return publish(self.state.model.state_dict(), self.state.policy_version, self.state.precision.dtype, bucket_mb)


class TrainerGroup:
    """Driver-side handle of the M trainer ranks."""

    def __init__(self, config: Config, schedule_steps: int, scoring: bool = False):
        """`scoring=True`: one actor that only serves inference calls (runtime.scoring=separate)."""
        import ray

        rt = config.runtime
        self.world = 1 if scoring else rt.trainer_workers
        self.label = "the scoring worker" if scoring else "trainer rank"
        cpus, gpus = (rt.scoring_cpus, rt.scoring_gpus) if scoring else (rt.trainer_cpus, rt.trainer_gpus)
        actor = ray.remote(TrainerRank).options(num_cpus=cpus, num_gpus=gpus, max_restarts=0)
        self.ranks = [actor.remote(config.to_dict(), schedule_steps, r, self.world, cpus) for r in range(self.world)]
        host, port = self._get([self.ranks[0].open_store.remote()])[0]
        self.info = self._get([rank.setup.remote(host, port) for rank in self.ranks])[0]

    def _get(self, refs: list):
        """ray.get of one call per rank (in rank order); a dead rank → WorkerLost naming it."""
        import ray

        try:
            return ray.get(refs)
        except ray.exceptions.RayActorError as exc:
            dead = self._dead_rank(refs)
            who = self.label if self.label != "trainer rank" else f"trainer rank {dead} of {self.world}"
            raise WorkerLost(f"{who} died ({type(exc).__name__}: "
                             f"{str(exc).strip().splitlines()[0][:200]})") from None

    def _dead_rank(self, refs: list) -> int:
        import ray

        for rank, ref in enumerate(refs):
            try:
                ray.get(ref, timeout=0)
            except ray.exceptions.RayActorError:
                return rank
            except Exception:  # noqa: BLE001 - another error or not ready: not this rank
                continue
        return 0

    def all(self, name: str, *args) -> list:
        """A TrainingState method on every rank, in parallel."""
        return self._get([rank.method.remote(name, *args) for rank in self.ranks])

    def first(self, name: str, *args):
        """A TrainingState method on rank 0 only."""
        return self._get([self.ranks[0].method.remote(name, *args)])[0]

    def train(self, role: str, batch):
        """A train call on every rank (the same batch, put once); rank 0's statistics."""
        import ray

        ref = ray.put(batch)
        return self._get([rank.call.remote(role, "train", ref) for rank in self.ranks])[0]

    def infer(self, role: str, kind: str, batch):
        """An inference call on rank 0, now."""
        return self._get([self.ranks[0].call.remote(role, kind, batch)])[0]

    def submit(self, role: str, kind: str, batch):
        """The same, started in the background (an ObjectRef; `collect` waits for it)."""
        return self.ranks[0].call.remote(role, kind, batch)

    def collect(self, refs: list) -> list:
        return self._get(refs)

    def version(self) -> int:
        return self._get([self.ranks[0].version.remote()])[0]

    def publish(self, bucket_mb: int):
        return self._get([self.ranks[0].publish.remote(bucket_mb)])[0]

    def close(self) -> None:
        import ray

        for rank in self.ranks:
            ray.kill(rank, no_restart=True)
