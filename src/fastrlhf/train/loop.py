"""`train(config)`: an RL run — set-up, the step loop over the algorithm's graph, checkpoints, export.

One step = one iteration of the algorithm's dataflow graph on `prompts_per_step` prompts, run by the
`LocalExecutor`; the loop knows nothing algorithm-specific. Around it: held-out evaluation at the
start and end, metrics (JSONL + TensorBoard) and a progress line every step, an atomic checkpoint
every `checkpoint_every` steps (weights, optimizer, scheduler, data position, config) from which
`resume` continues bit-identically, and the final policy exported as an HF directory. Ctrl-C stops
after the current step with a checkpoint (train/interrupt.py), so an interrupted run loses nothing.

Determinism: sampling and the trainer's shuffling are seeded by (seed, step) — not by a global RNG
stream — so a resumed run draws exactly what the uninterrupted run would have drawn.

Left out: distributed runs, async / off-policy rollouts, mixed precision (fp32 everywhere).
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from fastrlhf.algorithms.graphs import GRAPHS
from fastrlhf.config import Config, save_config
from fastrlhf.dataflow.executor import LocalExecutor
from fastrlhf.errors import UserError
from fastrlhf.model.hf_io import copy_tokenizer_files, load_model, save_model
from fastrlhf.model.tokenizer import load_tokenizer
from fastrlhf.rollout.engine import RolloutEngine
from fastrlhf.rollout.sampler import SamplingParams
from fastrlhf.telemetry.metrics import MetricsWriter
from fastrlhf.telemetry.progress import Progress
from fastrlhf.train.checkpoint import capture_rng, latest_checkpoint, load_checkpoint, restore_rng, save_checkpoint
from fastrlhf.train.critic import CriticWorker
from fastrlhf.train.data import pair_batch, prompt_batch, prompt_source
from fastrlhf.train.evaluate import evaluate, evaluate_preference
from fastrlhf.train.interrupt import GracefulStop, TrainingInterrupted
from fastrlhf.train.optim import build_optimizer, build_scheduler
from fastrlhf.train.reward_workers import is_reward_model_dir, load_reward_model, reward_worker
from fastrlhf.train.speculation import RolloutSpeculation
from fastrlhf.train.workers import ActorWorker, ReferenceWorker


@dataclass
class RunResult:
    run_dir: Path
    final_dir: Path
    start_eval: dict[str, float] = field(default_factory=dict)
    final_eval: dict[str, float] = field(default_factory=dict)
    history: list[dict] = field(default_factory=list)
    seconds: float = 0.0


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("train.device=cuda but no CUDA device is available")
    return torch.device(name)


def model_directory(config: Config) -> Path:
    """`model.path`, or for "builtin" the shipped starting policy of `task.name` (`BUILTIN_POLICIES`)."""
    if config.model.path == "builtin":
        return BUILTIN_POLICIES[config.task.name]()
    return Path(config.model.path)


def _preference_policy() -> Path:
    from fastrlhf.tasks.preference import policy_dir

    return policy_dir()


def _arithmetic_policy() -> Path:
    from fastrlhf.tasks.builtin_policy import builtin_policy_dir

    return builtin_policy_dir()


def _worked_addition_policy() -> Path:
    from fastrlhf.tasks.builtin_policy import worked_policy_dir

    return worked_policy_dir()


# built-in task name -> its shipped policy directory (model.path=builtin)
BUILTIN_POLICIES = {"arithmetic": _arithmetic_policy, "preference": _preference_policy,
                    "worked_addition": _worked_addition_policy}


def make_speculation(config: Config, model, params: SamplingParams) -> RolloutSpeculation:
    """The engine's speculator for `rollout.speculative`, with the draft model and its refresh
    (train/speculation.py)."""
    return RolloutSpeculation.build(config.rollout, model, params, config.train.micro_batch_size)


def build_critic(config: Config, policy, tokenizer, reward, device) -> CriticWorker:
    """PPO's critic from the reward model (`critic_init` auto / reward_model, when the reward is one
    with the policy's vocabulary: the critic reads the policy's token ids) or the policy + a fresh head."""
    from fastrlhf.model.heads import with_score_head

    a, t = config.algorithm, config.train
    from_rm = isinstance(reward, str) and is_reward_model_dir(reward)
    if from_rm and load_tokenizer(reward).hf.get_vocab() != tokenizer.hf.get_vocab():
        if a.critic_init == "reward_model":
            raise UserError(f"algorithm.critic_init=reward_model: {reward} has a different vocabulary from the policy")
        from_rm = False
    if a.critic_init == "reward_model" and not from_rm:
        raise UserError(f"algorithm.critic_init=reward_model but the reward ({reward!r}) is not a reward-model directory")
    if a.critic_init != "policy" and from_rm:
        model = load_reward_model(reward, device)[0]
    else:
        model = with_score_head(policy, seed=t.seed)
    optimizer = build_optimizer(model, a.critic_lr, t.weight_decay)
    scheduler = build_scheduler(optimizer, t.warmup_steps, t.steps * t.mini_batches, t.lr_decay)
    return CriticWorker(model, optimizer, scheduler, a, t.micro_batch_size, t.mini_batches, t.grad_clip)


def step_seed(seed: int, step: int) -> int:
    return seed * 1_000_003 + step


class Run:
    """Everything one run holds: models, workers, graph, data and output files."""

    def __init__(self, config: Config, resume: bool, show_progress: bool = True):
        self.config, self.show_progress = config, show_progress
        self.run_dir = Path(config.train.run_dir)
        self._check_run_dir(resume)
        torch.manual_seed(config.train.seed)
        self.device = device = resolve_device(config.train.device)
        self.model_dir = model_dir = model_directory(config)
        self.tokenizer = load_tokenizer(model_dir)
        self.tokenizer_files = copy_tokenizer_files(model_dir)
        self.model = load_model(model_dir, device=device)
        r, a, t = config.rollout, config.algorithm, config.train
        # what the run builds follows from the algorithm's graph (its roles and data keys), not its name
        self.needs_pairs = "sequences" in GRAPHS[a.name]().data_keys  # trains on tokenised pairs
        self.source = prompt_source(config.task, t.seed, pairs=self.needs_pairs)
        graph = GRAPHS[a.name](extra_reward_inputs=self.source.field_names, use_reference=a.kl_coef > 0)
        self.params = SamplingParams(temperature=r.temperature, top_p=r.top_p, top_k=r.top_k, max_new_tokens=r.max_new_tokens,
                                     stop_token_ids=tuple(self.tokenizer.stop_token_ids()), n=r.samples_per_prompt)
        self.optimizer = build_optimizer(self.model, t.lr, t.weight_decay)
        self.scheduler = build_scheduler(self.optimizer, t.warmup_steps, t.steps * t.mini_batches, t.lr_decay)
        self.speculation = make_speculation(config, self.model, self.params)
        self.engine = RolloutEngine(self.model, num_slots=r.num_slots, compile=r.compile, speculator=self.speculation.speculator)
        self.actor = ActorWorker(self.model, self.tokenizer, self.engine, self.params, self.optimizer, self.scheduler, a,
                                 t.micro_batch_size, t.mini_batches, t.grad_clip)
        workers = {"actor": self.actor}
        if "reward" in graph.roles:
            workers["reward"] = reward_worker(self.source.reward, self.source.field_names, config.task, device,
                                              t.micro_batch_size)
        self.reference = None
        if "ref" in graph.roles:
            self.reference = ReferenceWorker.for_actor(load_model(model_dir, device=device), self.actor, t.micro_batch_size)
            workers["ref"] = self.reference
        self.critic = None
        if "critic" in graph.roles:
            self.critic = build_critic(config, self.model, self.tokenizer, self.source.reward, device)
            workers["critic"] = self.critic
        self.reward_worker = workers.get("reward")
        self.executor = LocalExecutor(graph, workers)
        self.start_step = 0
        if resume:
            self._resume()

    def _check_run_dir(self, resume: bool) -> None:
        has_checkpoint = latest_checkpoint(self.run_dir) is not None if self.run_dir.exists() else False
        if resume and not has_checkpoint:
            raise UserError(f"{self.run_dir}: no checkpoint to resume from")
        if not resume and self.run_dir.exists() and any(self.run_dir.iterdir()):
            raise UserError(f"{self.run_dir}: run directory exists and is not empty (use --resume {self.run_dir}, or train.run_dir=NEW_DIR)")

    def companions(self) -> dict:
        """Other trained models saved in each checkpoint (the PPO critic, a distilled draft model)."""
        companions = self.speculation.companions()
        if self.critic is not None:
            companions["critic"] = (self.critic.model, self.critic.optimizer, self.critic.scheduler)
        return companions

    def _resume(self) -> None:
        path = latest_checkpoint(self.run_dir)
        step, rng, extra = load_checkpoint(path, self.model, self.optimizer, self.scheduler, companions=self.companions())
        restore_rng(rng)
        self.start_step = step
        self.engine.policy_version = int(extra.get("policy_version", step))

    def eval_metrics(self) -> dict[str, float]:
        if self.source.name == "preference":
            reference = self.reference.model if self.reference is not None else self._sft_model()
            return evaluate_preference(self.model, self.tokenizer, self.source.eval_rows, reference, self.reward_worker,
                                       self.config.rollout.max_new_tokens, num_slots=self.config.rollout.num_slots)
        if not self.source.eval_rows:
            return {}
        return evaluate(self.model, self.tokenizer, self.source.eval_rows, self.reward_worker, self.source.field_names,
                        self.config.rollout.max_new_tokens, num_slots=self.config.rollout.num_slots)

    def _sft_model(self):
        if getattr(self, "_initial_policy", None) is None:
            self._initial_policy = load_model(self.model_dir, device=self.device).eval()
        return self._initial_policy

    def step(self, step: int) -> dict[str, float]:
        t = self.config.train
        rows = self.source.rows_at(step * t.prompts_per_step, t.prompts_per_step)
        if self.needs_pairs:
            data = pair_batch(rows, self.tokenizer)
        else:
            data = prompt_batch(rows, self.source.field_names)
        self.actor.step_seed, self.actor.step = step_seed(t.seed, step), step
        if self.critic is not None:
            self.critic.step_seed = step_seed(t.seed, step)
        started = time.perf_counter()
        result = self.executor.run(data)
        metrics = self.speculation.after_step(step, result.batch, step_seed(t.seed, step))  # draft refresh, if due
        for call_stats in result.stats.values():
            metrics.update(call_stats)
        for name, seconds in result.seconds.items():
            metrics[f"time/{name}"] = seconds
        seconds = time.perf_counter() - started  # includes a draft refresh
        metrics["time/step"] = seconds
        metrics["tokens_per_s"] = float(result.batch["attention_mask"].sum()) / seconds
        metrics["kl"] = metrics.get("kl_ref", 0.0)
        return metrics

    def checkpoint(self, step: int) -> None:
        save_checkpoint(self.run_dir, step, self.model, self.optimizer, self.scheduler, capture_rng(),
                        {"policy_version": self.engine.policy_version, "data_position": step * self.config.train.prompts_per_step},
                        self.config.to_yaml(), extra_files=self.tokenizer_files, companions=self.companions())

    def save_before_failure(self, step: int, exc: Exception, updated: bool) -> None:
        """Step `step` (0-based) failed: a reward server went away, a reward function raised, ...
        If no model was `updated` in it yet, the weights are exactly those after the last completed
        step: checkpoint them so nothing is lost, and say where to resume. A failure after an update
        (a torn step) keeps the last periodic checkpoint."""
        saved = latest_checkpoint(self.run_dir)
        saved_step = int(saved.name.split("_")[1]) if saved is not None else 0
        if not updated and step > saved_step:
            self.checkpoint(step)
            saved, saved_step = latest_checkpoint(self.run_dir), step
        hint = (f"steps 1-{saved_step} are saved; continue with: fastrlhf train --resume {self.run_dir}"
                if saved is not None else "no step was completed")
        if isinstance(exc, UserError):
            exc.args = (f"{exc} ({hint})",)
        else:
            exc.add_note(f"fastrlhf: {hint}")

    def export(self) -> Path:
        return save_model(self.model, self.run_dir / "final", extra_files=self.tokenizer_files)


def train(config: Config, resume: bool = False, show_progress: bool = True) -> RunResult:
    """Run (or resume) the configured training job; returns where things went and the evals."""
    started = time.perf_counter()
    run = Run(config, resume, show_progress)
    run.run_dir.mkdir(parents=True, exist_ok=True)
    save_config(config, run.run_dir / "config.yaml")
    t = config.train
    result = RunResult(run.run_dir, run.run_dir / "final")
    with MetricsWriter(run.run_dir, resume_from_step=run.start_step if resume else None) as writer, \
            Progress(t.steps, start_step=run.start_step, enabled=show_progress) as progress, GracefulStop() as stop:
        if not resume:
            result.start_eval = run.eval_metrics()
            writer.log(0, result.start_eval)
            progress.phase(_eval_line("start", result.start_eval))
        for step in range(run.start_step, t.steps):
            version = run.engine.policy_version
            try:
                metrics = run.step(step)
            except Exception as exc:
                run.save_before_failure(step, exc, updated=run.engine.policy_version != version)
                raise
            writer.log(step + 1, metrics)
            progress.update(step + 1, metrics)
            result.history.append(metrics)
            if t.eval_every and (step + 1) % t.eval_every == 0 and step + 1 < t.steps:
                writer.log(step + 1, run.eval_metrics())
            if t.checkpoint_every and (step + 1) % t.checkpoint_every == 0 and step + 1 < t.steps:
                run.checkpoint(step + 1)
            elif stop.requested and step + 1 < t.steps:
                run.checkpoint(step + 1)
            if stop.requested and step + 1 < t.steps:
                raise TrainingInterrupted(step + 1, str(latest_checkpoint(run.run_dir)))
        result.final_eval = run.eval_metrics()
        writer.log(t.steps, result.final_eval)
        progress.phase(_eval_line("final", result.final_eval))
    run.checkpoint(t.steps)
    run.export()
    result.seconds = time.perf_counter() - started
    return result


def _eval_line(label: str, metrics: dict[str, float]) -> str:
    if not metrics:
        return f"{label}: no held-out evaluation for this task"
    return f"{label} held-out: " + "  ".join(f"{k.split('/', 1)[1]} {v:.3f}" for k, v in metrics.items())
