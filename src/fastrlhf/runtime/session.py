"""`RaySession`: a run's trained state on Ray, behind the methods of train/state.TrainingState.

The loop (train/loop.py) holds either a `TrainingState` (runtime.backend=local) or this, and calls
the same methods — set_step, begin / commit / rollback, save / load, eval_metrics, export — plus
`executor()` for the graph walk; it never learns which backend runs. This object owns:

- the Ray connection (runtime/cluster.py: a private local cluster, or `runtime.address`);
- the trainer group (runtime/trainer_group.py): M ranks, reference / reward / critic on rank 0 —
  or the reference and reward on a separate scoring actor (`runtime.scoring=separate`);
- the rollout pool (runtime/rollout_pool.py): N engines, balanced, migrating, fault-tolerant;
- the role proxies the executor calls: `ActorRole` (generate on the pool, train on the group, the
  weight sync between them) and `TrainerRole` (ref / reward / critic on the group).

The driver keeps only the tokenizer and the data source: it tokenises prompts and decodes
completions, so rollout workers exchange token ids only.
"""

from __future__ import annotations


from fastrlhf.config import Config
from fastrlhf.dataflow.batch import Batch
from fastrlhf.model.tokenizer import load_tokenizer
from fastrlhf.rollout.sampler import SamplingParams
from fastrlhf.runtime import cluster
from fastrlhf.runtime.executor import RayExecutor
from fastrlhf.train.build import model_directory
from fastrlhf.train.data import prompt_source
from fastrlhf.train.state import run_graph, sampling_params
from fastrlhf.algorithms.graphs import GRAPHS


class ActorRole:
    """The actor on Ray: `generate` on the rollout pool, `train` on every trainer rank."""

    def __init__(self, session: "RaySession"):
        self.session = session

    def sync_weights(self) -> dict[str, float]:
        s = self.session
        return s.pool.sync(s.policy_version, lambda: s.trainers.publish(s.config.runtime.sync_bucket_mb))

    def generate(self, batch: Batch, on_groups=None) -> tuple[Batch, dict[str, float]]:
        s = self.session
        params = SamplingParams(**{**s.params.__dict__, "seed": s.step_seed})
        return s.pool.generate_batch(list(batch["prompts"]), s.tokenizer, params, s.policy_version, on_groups)

    def group_batch(self, sequences) -> Batch:
        """The generate outputs of some finished samples (for streaming scoring)."""
        from fastrlhf.train.workers import rollout_batch

        return rollout_batch(sequences, self.session.tokenizer, 1.0)[0]

    def train(self, batch: Batch) -> dict[str, float]:
        return self.session.trainers.train("actor", batch)


class TrainerRole:
    """A role living on a trainer group (ref, reward, critic): inference on its rank 0, train on all
    ranks. `group` is the trainer group, or the separate scoring actor (runtime.scoring=separate)."""

    def __init__(self, group, role: str):
        self.group, self.role = group, role

    def inference(self, batch: Batch):
        return self.group.infer(self.role, "inference", batch)

    def submit(self, kind: str, batch: Batch):
        return self.group.submit(self.role, kind, batch)

    def collect(self, refs: list) -> list:
        return self.group.collect(refs)

    def train(self, batch: Batch) -> dict[str, float]:
        return self.group.train(self.role, batch)


class RaySession:
    def __init__(self, config: Config, schedule_steps: int):
        from fastrlhf.runtime.rollout_pool import RolloutPool
        from fastrlhf.runtime.trainer_group import TrainerGroup

        self.config = config
        self.trainers = self.pool = self.scorer = None
        self.owns_ray = cluster.connect(config.runtime)
        try:
            self.tokenizer = load_tokenizer(model_directory(config))
            pairs = "sequences" in GRAPHS[config.algorithm.name]().data_keys
            self.source = prompt_source(config.task, config.train.seed, pairs=pairs)
            self.graph = run_graph(config, self.source)
            self.params = sampling_params(config, self.tokenizer)
            self.step_seed = 0
            self.trainers = TrainerGroup(config, schedule_steps)
            self.kl_from_samples = self.trainers.info["kl_from_samples"]
            if any(call.kind == "generate" for call in self.graph.calls):
                self.pool = RolloutPool(config, self.trainers.info["rollout_dtype"])
            if config.runtime.scoring == "separate" and {"ref", "reward"} & set(self.graph.roles):
                self.scorer = TrainerGroup(config, schedule_steps, scoring=True)
            self.workers = {"actor": ActorRole(self)}
            for role in self.graph.roles:
                if role != "actor":
                    on_scorer = self.scorer is not None and role in ("ref", "reward")
                    self.workers[role] = TrainerRole(self.scorer if on_scorer else self.trainers, role)
        except BaseException:
            self.close()
            raise

    def executor(self) -> RayExecutor:
        return RayExecutor(self.graph, self.workers, stream=self.config.runtime.stream_scoring)

    # ------------------------------------------------------------------ TrainingState's methods
    @property
    def policy_version(self) -> int:
        return self.trainers.version()

    def set_step(self, step: int, seed: int) -> None:
        self.step_seed = seed
        self.trainers.all("set_step", step, seed)

    def begin(self) -> None:
        self.trainers.all("begin")

    def commit(self) -> None:
        self.trainers.all("commit")

    def rollback(self) -> bool:
        return all(self.trainers.all("rollback"))

    def after_step(self, step: int, batch, seed: int) -> dict[str, float]:
        return {}  # draft-model refresh is refused on ray (config.check_consistency)

    def save(self, run_dir, step: int, extra: dict, config_yaml: str, rollouts: list = ()) -> None:
        self.trainers.first("save", run_dir, step, extra, config_yaml, list(rollouts))

    def rollout_pool(self):
        """The rollout pool, for the asynchronous generator (runtime/async_rollouts.py)."""
        return self.pool

    def publish_weights(self, bucket_mb: int):
        """A snapshot of trainer rank 0's committed policy in the object store (runtime/weights.publish)."""
        return self.trainers.publish(bucket_mb)

    def load(self, path):
        return self.trainers.all("load", path)[0]

    def eval_metrics(self) -> dict[str, float]:
        return self.trainers.first("eval_metrics")

    def export(self, directory):
        return self.trainers.first("export", directory)

    def close(self) -> None:
        """Stop the run's actors, and the Ray cluster if this session started it."""
        for group in (self.pool, self.trainers, self.scorer):
            if group is not None:
                try:
                    group.close()
                except Exception:  # noqa: BLE001 - already dead: nothing to stop
                    pass
        self.pool = self.trainers = self.scorer = None
        if self.owns_ray:
            cluster.disconnect()
            self.owns_ray = False
