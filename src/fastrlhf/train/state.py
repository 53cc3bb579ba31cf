"""`TrainingState`: every model, optimizer and worker of a run, and what the loop asks of them.

The loop (train/loop.py) drives steps, data, metrics and checkpoint *timing*; this object holds the
trained state — the policy and its AdamW + schedule, the precision and the engine's rollout copy,
the speculator, the actor / reference / reward / critic workers, and the step transaction — and
does what only its holder can: begin / commit / roll back a step, save and load a checkpoint, run
the held-out evaluation, export the policy.

One class for both backends: `runtime.backend=local` builds it in the driver process;
`runtime.backend=ray` builds one per trainer rank inside a Ray actor (runtime/trainer_group.py),
where `with_engine=False` (generation runs on the rollout workers) and `data_parallel` reduces the
gradients across ranks (train/data_parallel.py).

Asynchronous rollouts on `local` (runtime.max_staleness ≥ 1): `rollout_pool()` starts the generator
(one rollout worker as a Ray actor; this process keeps the other cores until `close()`) and
`publish_weights()` snapshots the policy into the object store (runtime/async_rollouts.py).

The policy version counts committed actor updates (`ActorWorker.policy_version`); a rolled-back step
restores it, and every sample carries the version that generated it.
"""

from __future__ import annotations

from pathlib import Path

import torch

from fastrlhf.algorithms.graphs import GRAPHS
from fastrlhf.config import Config
from fastrlhf.model.device import resolve_device
from fastrlhf.model.hf_io import copy_tokenizer_files, load_model, load_model_and_tokenizer, save_model
from fastrlhf.model.precision import RolloutCopy, resolve_precision
from fastrlhf.rollout.engine import RolloutEngine
from fastrlhf.rollout.sampler import SamplingParams
from fastrlhf.train.build import build_critic, make_speculation, model_directory
from fastrlhf.train.checkpoint import capture_rng, check_finite, load_checkpoint, restore_rng, save_checkpoint
from fastrlhf.train.data import prompt_source
from fastrlhf.train.evaluate import evaluate, evaluate_preference
from fastrlhf.train.optim import build_optimizer, build_scheduler
from fastrlhf.train.reward_workers import reward_worker
from fastrlhf.train.rollout_queue import save_rollouts
from fastrlhf.train.transaction import StepTransaction
from fastrlhf.train.workers import ActorWorker, ReferenceWorker


def sampling_params(config: Config, tokenizer) -> SamplingParams:
    """The rollout sampling distribution of a run (also the trainer's scoring distribution)."""
    r = config.rollout
    return SamplingParams(temperature=r.temperature, top_p=r.top_p, top_k=r.top_k, max_new_tokens=r.max_new_tokens,
                          stop_token_ids=tuple(tokenizer.stop_token_ids()), n=r.samples_per_prompt)


def run_graph(config: Config, source):
    """The algorithm's dataflow graph for this run's data fields and KL setting."""
    return GRAPHS[config.algorithm.name](extra_reward_inputs=source.field_names, use_reference=config.algorithm.kl_coef > 0)


class TrainingState:
    def __init__(self, config: Config, schedule_steps: int, with_engine: bool = True, data_parallel=None):
        """`schedule_steps`: the LR schedule's horizon in optimizer steps (a resumed run keeps its own).
        `with_engine=False`: no rollout engine here (the rollout workers generate).
        `data_parallel`: a train/data_parallel.DataParallel for trainer rank r of M, or None (one rank)."""
        self.config = config
        r, a, t = config.rollout, config.algorithm, config.train
        torch.manual_seed(t.seed)
        self.device = device = resolve_device(t.device, option="train.device")
        self.model_dir = model_dir = model_directory(config)
        self.model, self.tokenizer = load_model_and_tokenizer(model_dir, device=device)  # vocabularies checked
        self.tokenizer_files = copy_tokenizer_files(model_dir)
        self.source = prompt_source(config.task, t.seed, pairs="sequences" in GRAPHS[a.name]().data_keys)
        self.graph = run_graph(config, self.source)
        self.params = sampling_params(config, self.tokenizer)
        self.optimizer = build_optimizer(self.model, t.lr, t.weight_decay)
        self.scheduler = build_scheduler(self.optimizer, t.warmup_steps, schedule_steps, t.lr_decay)
        self.precision = resolve_precision(config.model.dtype, device, sum(p.numel() for p in self.model.parameters()))
        self.rollout = self.speculation = self.engine = None
        if with_engine:
            self.rollout = RolloutCopy(self.model, self.precision.dtype)  # the engine's weights (the master in fp32)
        self.speculation = make_speculation(config, self.rollout.model if with_engine else self.model, self.params)
        if with_engine:
            self.engine = RolloutEngine(self.rollout.model, num_slots=r.num_slots, compile=r.compile,
                                        speculator=self.speculation.speculator)
        self.actor = ActorWorker(self.model, self.tokenizer, self.engine, self.params, self.optimizer, self.scheduler, a,
                                 t.micro_batch_size, t.mini_batches, t.grad_clip, t.micro_batch_tokens, self.precision,
                                 self.rollout if with_engine else None, data_parallel=data_parallel)
        self.workers = {"actor": self.actor}
        if "reward" in self.graph.roles:
            self.workers["reward"] = reward_worker(self.source.reward, self.source.field_names, config.task, device,
                                                   t.micro_batch_size, self.precision)
        self.reference = None
        if "ref" in self.graph.roles:
            self.reference = ReferenceWorker.for_actor(self.precision.frozen(load_model(model_dir, device=device)), self.actor)
            self.workers["ref"] = self.reference
        self.critic = None
        if "critic" in self.graph.roles:
            self.critic = build_critic(config, self.model, self.tokenizer, self.source.reward, device, schedule_steps,
                                       self.precision.dtype, data_parallel=data_parallel)
            self.workers["critic"] = self.critic
        self.reward_worker = self.workers.get("reward")
        # the logged `kl`: from the samples' log-probs (policy gradients) or the DPO loss's own term
        self.kl_from_samples = self.actor.objective.uses_sampling_distribution
        self._initial_policy = None
        self.transaction = StepTransaction({"actor": (self.model, self.optimizer, self.scheduler), **self.companions()},
                                           snapshots=t.atomic_steps)
        self.actor.deferred = self.transaction.deferred  # their last update of a step applies at commit
        self.actor.staleness_bound = max(config.runtime.max_staleness, t.off_policy_steps - 1)
        if self.critic is not None:
            self.critic.deferred = self.transaction.deferred

    # ------------------------------------------------------------------ the step
    @property
    def policy_version(self) -> int:
        return self.actor.policy_version

    @policy_version.setter
    def policy_version(self, version: int) -> None:
        self.actor.policy_version = version

    def set_step(self, step: int, seed: int) -> None:
        """The step (0-based) about to run and its seed (sampling, mini-batch shuffles)."""
        self.actor.step_seed, self.actor.step = seed, step
        if self.critic is not None:
            self.critic.step_seed = seed

    def begin(self) -> None:
        self._version = self.policy_version
        self.transaction.begin()

    def commit(self) -> None:
        self.transaction.commit()

    def rollback(self) -> bool:
        """Back to the state before `begin()`; False when a step was torn (see StepTransaction)."""
        self.policy_version = self._version
        return self.transaction.rollback()

    def after_step(self, step: int, batch, seed: int) -> dict[str, float]:
        """The draft model's refresh, if due (train/speculation.py)."""
        return self.speculation.after_step(step, batch, seed)

    # ------------------------------------------------------------------ asynchronous rollouts (K ≥ 1)
    def rollout_pool(self):
        """The generator of an asynchronous local run: one rollout worker as a Ray actor on a private
        cluster (runtime/rollout_pool.py) — its own process, so generation and training overlap. This
        process then keeps the CPUs the worker does not take."""
        import os

        from fastrlhf.runtime import cluster
        from fastrlhf.runtime.rollout_pool import RolloutPool

        self.owns_ray = cluster.connect(self.config.runtime)
        self.threads_before = torch.get_num_threads()  # given back at close()
        torch.set_num_threads(max(1, (os.cpu_count() or 2) - self.config.runtime.rollout_cpus))
        self.pool = RolloutPool(self.config, str(self.precision.dtype).removeprefix("torch."))
        return self.pool

    def publish_weights(self, bucket_mb: int) -> tuple[int, list, int, float]:
        """A snapshot of the policy in the object store → (version, refs, bytes, seconds to pack + put)."""
        from fastrlhf.runtime.weights import publish

        return publish(self.model.state_dict(), self.policy_version, self.precision.dtype, bucket_mb)

    def close(self) -> None:
        """Stop the asynchronous generator's pool and the Ray cluster this run started (if any)."""
        pool, self.pool = getattr(self, "pool", None), None
        if pool is not None:
            pool.close()
            torch.set_num_threads(self.threads_before)
        if getattr(self, "owns_ray", False):
            from fastrlhf.runtime import cluster

            cluster.disconnect()
            self.owns_ray = False

    # ------------------------------------------------------------------ checkpoints, eval, export
    def companions(self) -> dict:
        """Other trained models saved in each checkpoint (the PPO critic, a distilled draft model)."""
        companions = self.speculation.companions()
        if self.critic is not None:
            companions["critic"] = (self.critic.model, self.critic.optimizer, self.critic.scheduler)
        return companions

    def save(self, run_dir: Path, step: int, extra: dict, config_yaml: str, rollouts: list = ()) -> None:
        """An atomic checkpoint of step `step` (train/checkpoint.py); `extra` gets the policy version,
        `rollouts/` the queued rollouts made ahead (train/rollout_queue.py)."""
        more = (lambda directory: save_rollouts(list(rollouts), directory / "rollouts")) if rollouts else None
        save_checkpoint(run_dir, step, self.model, self.optimizer, self.scheduler, capture_rng(),
                        {**extra, "policy_version": self.policy_version}, config_yaml,
                        extra_files=self.tokenizer_files, companions=self.companions(), write_more=more)

    def load(self, path: Path) -> tuple[int, dict]:
        """Load a checkpoint into every model, optimizer and the RNG → (step, extra)."""
        step, rng, extra = load_checkpoint(path, self.model, self.optimizer, self.scheduler, companions=self.companions())
        restore_rng(rng, str(path / "rng.json"))
        self.policy_version = int(extra.get("policy_version", step))
        return step, extra

    def eval_metrics(self) -> dict[str, float]:
        rollout = self.config.rollout
        if self.source.name == "preference":
            reference = self.reference.model if self.reference is not None else self._sft_model()
            return evaluate_preference(self.model, self.tokenizer, self.source.eval_rows, reference, self.reward_worker,
                                       rollout.max_new_tokens, num_slots=rollout.num_slots)
        if not self.source.eval_rows:
            return {}
        return evaluate(self.model, self.tokenizer, self.source.eval_rows, self.reward_worker, self.source.field_names,
                        rollout.max_new_tokens, num_slots=rollout.num_slots)

    def _sft_model(self):
        if self._initial_policy is None:
            self._initial_policy = load_model(self.model_dir, device=self.device).eval()
        return self._initial_policy

    def export(self, directory: Path) -> Path:
        check_finite(self.model)
        return save_model(self.model, directory, extra_files=self.tokenizer_files)
