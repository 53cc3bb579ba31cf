"""`train(config)`: an RL run — set-up, the step loop over the algorithm's graph, checkpoints, export.

One step = one iteration of the algorithm's dataflow graph on `prompts_per_step` prompts, run by the
`LocalExecutor`; the loop knows nothing algorithm-specific. Around it: held-out evaluation at the
start and end, metrics (JSONL + TensorBoard) and a progress line every step, an atomic checkpoint
every `checkpoint_every` steps (weights, optimizer, scheduler, data position, config) from which
`resume` continues bit-identically, and the final policy exported as an HF directory. Ctrl-C stops
after the current step with a checkpoint (train/interrupt.py), so an interrupted run loses nothing.

Sturdiness:
- A step is atomic (train/transaction.py): if it fails half-way, every model goes back to its
  pre-step state before anything is checkpointed; the failure's message names the resume command.
- A non-finite loss or gradient norm skips the step (pre-step state kept, `nonfinite_skips`
  counted); `train.max_nonfinite_skips` skips in a row stop the run. Nothing non-finite is saved.
- `--resume` honours or refuses each changed key (train/resume.py); a run directory with no
  checkpoint yet starts again from step 0; a finished run is not redone.
- A hang watchdog (train/watchdog.py) dumps every thread's stack after `train.hang_timeout` s.

Determinism: sampling and the trainer's shuffling are seeded by (seed, step) — not by a global RNG
stream — so a resumed run draws exactly what the uninterrupted run would have drawn.

Precision (`model.dtype`, model/precision.py): the actor and critic train under autocast over fp32
master weights; the engine decodes from a low-precision copy refreshed before each generate; the
reference and reward model are stored in the compute dtype.

Rollouts made ahead (`train.off_policy_steps`, `runtime.max_staleness`; train/rollout_queue.py, docs/async.md):
a step then trains on a rollout generated earlier — its prompts, samples and the version that made
them — and each checkpoint holds the queued rollouts made from weights it no longer has.

Left out: several generate calls per step.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from fastrlhf.algorithms.losses.policy import mean_k3_kl
from fastrlhf.config import Config, config_from_dict, save_config
from fastrlhf.dataflow.executor import LocalExecutor
from fastrlhf.errors import UserError, WorkerLost
from fastrlhf.telemetry.metrics import MetricsWriter, read_metrics
from fastrlhf.telemetry.progress import Progress, phase
from fastrlhf.train.checkpoint import latest_checkpoint, read_checkpoint_info
from fastrlhf.train.data import pair_batch, prompt_batch
from fastrlhf.train.interrupt import GracefulStop, TrainingInterrupted
from fastrlhf.train.resume import check_resume_changes
from fastrlhf.train.rollout_queue import InlineRollouts, Rollout, RolloutSchedule, load_rollouts
from fastrlhf.train.state import TrainingState
from fastrlhf.train.watchdog import Watchdog
from fastrlhf.updates import NonFiniteUpdate

@dataclass
class RunResult:
    run_dir: Path
    final_dir: Path
    start_eval: dict[str, float] = field(default_factory=dict)
    final_eval: dict[str, float] = field(default_factory=dict)
    history: list[dict] = field(default_factory=list)
    seconds: float = 0.0


def step_seed(seed: int, step: int) -> int:
    return seed * 1_000_003 + step


class NonFiniteError(UserError):
    """`train.max_nonfinite_skips` steps in a row had a non-finite loss or gradient: the run stops."""


def sample_kl(batch) -> float | None:
    """Mean per-token k3 estimate of KL(π_behaviour ‖ π_ref) on the step's samples (response tokens),
    from the engine's and the reference's log-probs — the same number whether the KL penalty lives in
    the loss or in the reward (`kl_in`). None without a reference."""
    if "ref_logprobs" not in batch or "logprobs" not in batch:
        return None
    return mean_k3_kl(batch["logprobs"], batch["ref_logprobs"], batch["response_mask"])


class Run:
    """Everything one run holds: models, workers, graph, data and output files."""

    def __init__(self, config: Config, resume: bool, show_progress: bool = True):
        self.config, self.show_progress = config, show_progress
        t = config.train
        self.run_dir = Path(t.run_dir)
        self.resume_from = self._check_run_dir(resume)
        self.restarted = resume and self.resume_from is None  # --resume of a run that saved nothing yet
        self.schedule_steps = t.steps * t.mini_batches  # the LR schedule's horizon, in optimizer steps
        self.resume_notes: list[str] = []
        if self.resume_from is not None:
            saved_config, extra = read_checkpoint_info(self.resume_from)
            self.schedule_steps = int(extra.get("schedule_steps", saved_config["train"]["steps"] * t.mini_batches))
            self.resume_notes = check_resume_changes(config_from_dict(saved_config, str(self.resume_from / "config.yaml")),
                                                     config, self.schedule_steps)
        self.trainer = build_trainer(config, self.schedule_steps)  # models, optimizers, workers (train/state.py)
        self.tokenizer, self.source, graph = self.trainer.tokenizer, self.trainer.source, self.trainer.graph
        self.needs_pairs = "sequences" in graph.data_keys  # trains on tokenised pairs
        self.executor = self.trainer.executor() if hasattr(self.trainer, "executor") else LocalExecutor(
            graph, self.trainer.workers)
        self.start_step = self.current_step = 0
        self.data_position = 0  # prompts consumed so far
        self.step_prompts = t.prompts_per_step  # prompts the current step consumes
        self.nonfinite_skips = self.consecutive_skips = 0
        self.schedule = RolloutSchedule(config.runtime.max_staleness, t.off_policy_steps)
        self.generate_call = next((c for c in graph.calls if c.kind == "generate"), None)
        self.rollouts = None  # rollouts made ahead of their step (train/rollout_queue.py), None when synchronous
        try:
            if self.resume_from is not None:
                self._resume()
            if not self.schedule.synchronous:
                self.rollouts = self._make_rollouts()
                if self.resume_from is not None:
                    self._restore_rollouts()
        except BaseException:
            self.close()
            raise

    def _check_run_dir(self, resume: bool) -> Path | None:
        """The checkpoint to resume from (None: start at step 0), or a UserError for a directory we must not use."""
        if self.run_dir.exists() and not self.run_dir.is_dir():
            raise UserError(f"train.run_dir={self.run_dir} is a file, not a directory")
        checkpoint = latest_checkpoint(self.run_dir) if self.run_dir.is_dir() else None
        if resume:
            if checkpoint is None and not (self.run_dir / "config.yaml").is_file():
                raise UserError(f"{self.run_dir}: no checkpoint to resume from (not a fastrlhf run directory?)")
            return checkpoint
        if self.run_dir.exists() and any(self.run_dir.iterdir()):
            raise UserError(f"{self.run_dir}: run directory exists and is not empty (use --resume {self.run_dir}, or train.run_dir=NEW_DIR)")
        return None

    def _resume(self) -> None:
        step, extra = self.trainer.load(self.resume_from)
        self.start_step = self.current_step = step
        self.data_position = int(extra.get("data_position", step * self.config.train.prompts_per_step))
        self.nonfinite_skips = int(extra.get("nonfinite_skips", 0))
        self.consecutive_skips = int(extra.get("consecutive_skips", 0))

    def _restore_rollouts(self) -> None:
        """The checkpoint's queued rollouts back into the queue; steps it holds none for (a finished
        run extended with a larger train.steps) are generated from the resumed weights — said once."""
        saved = load_rollouts(self.resume_from / "rollouts")
        self.rollouts.restore(saved)
        have = {r.step for r in saved}
        missing = [j for j in self.schedule.ahead_of(self.start_step, self.config.train.steps) if j not in have]
        if missing:
            self.resume_notes.append(f"steps {missing[0] + 1}-{missing[-1] + 1} train on rollouts of the resumed "
                                     f"weights: the checkpoint holds none for them (it ended a shorter run)")

    def _make_rollouts(self):
        """The producer of rollouts made ahead: in this process (N off-policy steps) or a generator
        thread driving the rollout pool (max_staleness K ≥ 1, runtime/async_rollouts.py)."""
        t = self.config.train
        if self.schedule.max_staleness == 0:
            return InlineRollouts(self.schedule, t.steps, self._generate_ahead, self.data_position)
        from fastrlhf.runtime.async_rollouts import AsyncRollouts

        return AsyncRollouts(self.schedule, t.steps, self.trainer.rollout_pool(),
                             lambda: self.trainer.publish_weights(self.config.runtime.sync_bucket_mb),
                             self._data_at, self.tokenizer, self.trainer.params, lambda j: step_seed(t.seed, j),
                             first_step=self.start_step, first_position=self.data_position)

    def _data_at(self, position: int):
        """One step's data: the `prompts_per_step` prompt rows (or tokenised pairs) from `position`."""
        rows = self.source.rows_at(position, self.config.train.prompts_per_step)
        if self.needs_pairs:
            return pair_batch(rows, self.tokenizer)
        return prompt_batch(rows, self.source.field_names)

    def _generate_ahead(self, step: int, position: int) -> Rollout:
        """Step `step`'s generate call, now, with the current weights (N off-policy steps)."""
        name = self.generate_call.name
        data = self._data_at(position)
        self.trainer.set_step(step, step_seed(self.config.train.seed, step))
        version = self.trainer.policy_version
        result = self.executor.run(data, only=(name,))
        stats = {k: v for call_stats in result.stats.values() for k, v in call_stats.items()}
        return Rollout(step, version, position, data, result.batch.select_keys(self.generate_call.outputs), stats,
                       sum(result.seconds.values()))

    def eval_metrics(self) -> dict[str, float]:
        return self.trainer.eval_metrics()

    def step(self, step: int) -> dict[str, float]:
        """Step `step` (0-based) on the next `prompts_per_step` prompts — or on the rollout made ahead
        for it; the caller advances the data position once the step is committed (or skipped)."""
        t = self.config.train
        self.current_step = step
        started = time.perf_counter()
        waited = None
        if self.rollouts is None:
            data, done = self._data_at(self.data_position), None
        else:
            if self.executor.on_call is not None:  # the hang watchdog: what this step waits for
                self.executor.on_call("its rollout (made ahead)")
            rollout, waited = self.rollouts.next(step, self.trainer.policy_version)
            data = rollout.data
            done = {self.generate_call.name: ((rollout.outputs, rollout.stats), rollout.seconds)}
        self.step_prompts = len(data) if not self.needs_pairs else t.prompts_per_step
        self.trainer.set_step(step, step_seed(t.seed, step))
        result = self.executor.run(data, done=done)
        metrics = self.trainer.after_step(step, result.batch, step_seed(t.seed, step))  # draft refresh, if due
        if waited is not None:
            metrics["time/rollout_wait"] = waited  # the part of generation the trainer waited for
        for call_stats in result.stats.values():
            metrics.update(call_stats)
        for name, seconds in result.seconds.items():
            metrics[f"time/{name}"] = seconds
        seconds = time.perf_counter() - started  # includes a draft refresh
        metrics["time/step"] = seconds
        metrics["tokens_per_s"] = float(result.batch["attention_mask"].sum()) / seconds
        kl = sample_kl(result.batch) if self.trainer.kl_from_samples else metrics.get("kl_ref")
        if kl is not None:
            metrics["kl"] = kl
        return metrics

    def run_step(self, step: int) -> dict[str, float]:
        """`step` as one transaction: committed, skipped (non-finite update: pre-step state kept, the
        step's prompts consumed) or, on any other failure, rolled back with a checkpoint of the
        completed steps before the error goes on."""
        self.trainer.begin()
        try:
            metrics = self.step(step)
        except NonFiniteUpdate as bad:
            if not self.trainer.rollback():
                raise self.torn_step(step, bad) from None
            self.nonfinite_skips += 1
            self.consecutive_skips += 1
            # only on a skipped step: the progress line then says so (telemetry/progress.py)
            metrics = {"nonfinite_skips": float(self.nonfinite_skips),
                       "nonfinite_skipped_total": float(self.nonfinite_skips)}
            if self.consecutive_skips >= self.config.train.max_nonfinite_skips:
                self._consumed(step)
                error = NonFiniteError(f"step {step + 1}: {bad}; {self.consecutive_skips} steps in a row were skipped "
                                       f"for non-finite updates (train.max_nonfinite_skips) — lower train.lr, set "
                                       f"train.grad_clip, or check the reward scale")
                self.save_before_failure(step + 1, error)
                raise error from None
        except WorkerLost as lost:  # a trainer rank (or every rollout worker) died: the last checkpoint stands
            raise UserError(f"step {step + 1}: {lost}; {self.resume_hint()}") from None
        except BaseException as exc:
            if not self.trainer.rollback():
                raise self.torn_step(step, exc) from exc
            self.save_before_failure(step, exc)
            raise
        else:
            try:
                self.trainer.commit()
            except BaseException as exc:  # failed while applying the step's last updates: torn
                raise self.torn_step(step, exc) from exc
            self.consecutive_skips = 0
            metrics["nonfinite_skips"] = float(self.nonfinite_skips)
        self._consumed(step)
        return metrics

    def _consumed(self, step: int) -> None:
        """Step `step` is done (committed or skipped): its prompts and its rollout are used up."""
        self.data_position += self.step_prompts
        if self.rollouts is not None:
            self.rollouts.consumed(step)

    def checkpoint(self, step: int) -> None:
        extra = {"data_position": self.data_position, "schedule_steps": self.schedule_steps,
                 "nonfinite_skips": self.nonfinite_skips, "consecutive_skips": self.consecutive_skips}
        queued = self.rollouts.saved(step) if self.rollouts is not None else []
        self.trainer.save(self.run_dir, step, extra, self.config.to_yaml(), rollouts=queued)

    def saved_step(self) -> int | None:
        saved = latest_checkpoint(self.run_dir) if self.run_dir.is_dir() else None
        return int(saved.name.split("_")[1]) if saved is not None else None

    def resume_hint(self, nothing_saved: str | None = None) -> str:
        """What is saved and how to continue; `nothing_saved` replaces the text used when no step is."""
        saved = self.saved_step()
        if saved:
            return f"steps 1-{saved} are saved; continue with: fastrlhf train --resume {self.run_dir}"
        return nothing_saved or f"no step is saved yet; fastrlhf train --resume {self.run_dir} starts the run again from step 1"

    def torn_step(self, step: int, exc: BaseException) -> UserError:
        """The error for a step that failed after an update it cannot undo (with `train.atomic_steps=false`,
        or inside a deferred last update): nothing is checkpointed (the models are between two steps);
        the last checkpoint is intact."""
        hint = self.resume_hint(nothing_saved="no step was completed")
        return UserError(f"step {step + 1} failed after an update was applied ({type(exc).__name__}: {exc}); "
                         f"it cannot be undone, so nothing was saved ({hint})")

    def save_before_failure(self, step: int, exc: BaseException) -> None:
        """The run stops with `step` steps completed and the models in their state after them (a
        failed step was rolled back): checkpoint them unless already saved, and name the resume command
        in the error. A Ctrl-C pressed twice (KeyboardInterrupt) saves nothing more: it means now."""
        if not isinstance(exc, KeyboardInterrupt) and step > (self.saved_step() or 0):
            self.checkpoint(step)
        hint = self.resume_hint(nothing_saved="no step was completed")  # a fresh run that saved nothing is removed
        if isinstance(exc, UserError):
            exc.args = (f"{exc} ({hint})",)
        elif isinstance(exc, KeyboardInterrupt):
            exc.resume_hint = hint
        else:
            exc.add_note(f"fastrlhf: {hint}")

    def export(self) -> Path:
        return self.trainer.export(self.run_dir / "final")

    def close(self) -> None:
        """Stop the run's generator thread and workers (Ray actors; nothing else for the local backend)."""
        if getattr(self, "rollouts", None) is not None:
            self.rollouts.close()
        if hasattr(self.trainer, "close"):
            self.trainer.close()


def _logged_eval(run_dir: Path, step: int) -> dict[str, float]:
    """The eval/ metrics logged at `step` (for a resumed run's summary)."""
    rows = [r for r in read_metrics(run_dir) if r.get("step") == step and any(k.startswith("eval/") for k in r)]
    return {k: v for k, v in rows[-1].items() if k.startswith("eval/")} if rows else {}


def build_trainer(config: Config, schedule_steps: int):
    """The run's trained state: in this process (`runtime.backend=local`), or trainer ranks and
    rollout workers as Ray actors behind the same methods (`ray`, runtime/)."""
    if config.runtime.backend == "ray":
        from fastrlhf.runtime.session import RaySession

        return RaySession(config, schedule_steps)
    # asynchronous rollouts come from a rollout worker (runtime/async_rollouts.py): no engine here
    return TrainingState(config, schedule_steps, with_engine=config.runtime.max_staleness == 0)


def train(config: Config, resume: bool = False, show_progress: bool = True) -> RunResult:
    """Run (or resume) the configured training job; returns where things went and the evals."""
    started = time.perf_counter()
    run = Run(config, resume, show_progress)
    try:
        return _train(run, config, started)
    finally:
        run.close()


def _train(run: "Run", config: Config, started: float) -> RunResult:
    show_progress = run.show_progress
    t = config.train
    result = RunResult(run.run_dir, run.run_dir / "final")
    if run.restarted:  # a run killed before its first checkpoint: what it logged belongs to no saved step
        (run.run_dir / "metrics.jsonl").unlink(missing_ok=True)
        shutil.rmtree(run.run_dir / "tensorboard", ignore_errors=True)
    resuming = run.resume_from is not None
    if resuming:
        result.start_eval = _logged_eval(run.run_dir, 0)
    if resuming and run.start_step >= t.steps:  # finished (or killed during the export)
        if not (result.final_dir / "config.json").is_file():
            run.export()
        result.final_eval = _logged_eval(run.run_dir, run.start_step)
        progress_note(show_progress, f"the run finished at step {run.start_step}; nothing to do")
        return result
    run.run_dir.mkdir(parents=True, exist_ok=True)
    save_config(config, run.run_dir / "config.yaml")
    for note in run.resume_notes:
        progress_note(show_progress, f"--resume: {note}")
    with MetricsWriter(run.run_dir, resume_from_step=run.start_step if resuming else None) as writer, \
            Progress(t.steps, start_step=run.start_step, enabled=show_progress) as progress, GracefulStop() as stop, \
            Watchdog(t.hang_timeout, run.run_dir, run.resume_hint) as watchdog:
        run.executor.on_call = lambda name: watchdog.beat(f"step {run.current_step + 1}: {name}")
        if not resuming:
            watchdog.beat("the start evaluation")
            result.start_eval = run.eval_metrics()
            writer.log(0, result.start_eval)
            progress.phase(_eval_line("start", result.start_eval))
        for step in range(run.start_step, t.steps):
            metrics = run.run_step(step)
            writer.log(step + 1, metrics)
            progress.update(step + 1, metrics)
            result.history.append(metrics)
            if t.eval_every and (step + 1) % t.eval_every == 0 and step + 1 < t.steps:
                watchdog.beat(f"the evaluation after step {step + 1}")
                writer.log(step + 1, run.eval_metrics())
            if step + 1 < t.steps and ((t.checkpoint_every and (step + 1) % t.checkpoint_every == 0) or stop.requested):
                watchdog.beat(f"the checkpoint of step {step + 1}")
                run.checkpoint(step + 1)
            if stop.requested and step + 1 < t.steps:
                raise TrainingInterrupted(step + 1, str(latest_checkpoint(run.run_dir)))
        watchdog.beat("the final evaluation")
        result.final_eval = run.eval_metrics()
        writer.log(t.steps, result.final_eval)
        progress.phase(_eval_line("final", result.final_eval))
        watchdog.beat("the final checkpoint and export")
        run.checkpoint(t.steps)
        run.export()
    result.seconds = time.perf_counter() - started
    return result


def progress_note(enabled: bool, message: str) -> None:
    if enabled:
        phase(message)


def _eval_line(label: str, metrics: dict[str, float]) -> str:
    if not metrics:
        return f"{label}: no held-out evaluation for this task"
    return f"{label} held-out: " + "  ".join(f"{k.split('/', 1)[1]} {v:.3f}" for k, v in metrics.items())
