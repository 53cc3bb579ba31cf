"""Rollouts made ahead of the step that trains on them: the version schedule, the queue, its checkpoint.

Async RLHF (arXiv 2410.18252) trains online but off-policy: step j may train on samples generated
with weights older than its own. Two ways to get there (steps 0-based; "the weights of step s" =
the weights at the start of step s, after s steps):

    synchronous                        weights_step(j) = j
    N off-policy steps (N ≥ 2)         weights_step(j) = N·⌊j / N⌋     generate N steps' rollouts with
                                                                       one policy, then take the N steps
    bounded staleness K ≥ 1            weights_step(j) = max(0, j − K)  a generator runs K steps ahead

Staleness of a sample = the trainer's policy version at the step that trains on it − the version
that generated it ≤ j − weights_step(j) ≤ `bound` = max(K, N − 1) (a skipped non-finite step makes
no version, so staleness can be lower, never higher). The schedule is a function of the step only,
not of timing: a slow trainer never makes a generator use newer weights and a slow generator never
makes the trainer use older samples — so a run is reproducible and its resume exact. (AReaL and
verl let the generator take whatever version is newest; that is fresher on average but makes the
samples depend on timing.)

The queue holds `Rollout`s in step order; at a checkpoint after step s it holds exactly the
rollouts of the steps j ≥ s whose weights_step(j) < s — made from weights the checkpoint no longer
has — and those are saved with it (`save_rollouts` / `load_rollouts`: tensors as safetensors, the
rest as JSON, inside the atomic checkpoint directory and its checksums). Sampling randomness is a
function of (seed, step, prompt, sample, position) (rollout/sampler.py), so a generator has no RNG
position to save beyond the step and the data position each rollout records.
"""

from __future__ import annotations

import json
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from fastrlhf.dataflow.batch import Batch
from fastrlhf.errors import UserError


class StalenessError(RuntimeError):
    """A step was handed samples older than the schedule allows — a bug, never silently trained on."""


@dataclass(frozen=True)
class RolloutSchedule:
    max_staleness: int = 0  # K
    off_policy_steps: int = 1  # N

    def __post_init__(self) -> None:
        if self.max_staleness < 0 or self.off_policy_steps < 1 or (self.max_staleness and self.off_policy_steps > 1):
            raise ValueError(f"bad schedule K={self.max_staleness}, N={self.off_policy_steps}")

    @property
    def synchronous(self) -> bool:
        return self.max_staleness == 0 and self.off_policy_steps == 1

    @property
    def bound(self) -> int:
        """The largest staleness (policy versions) a sample may have when it is trained on."""
        return max(self.max_staleness, self.off_policy_steps - 1)

    def weights_step(self, step: int) -> int:
        """The step whose starting weights generate step `step`'s rollouts."""
        if self.max_staleness:
            return max(0, step - self.max_staleness)
        return self.off_policy_steps * (step // self.off_policy_steps)

    def ahead_of(self, step: int, total: int) -> list[int]:
        """The steps ≥ `step` (and < `total`) whose rollouts come from weights older than step `step`'s:
        what the queue must hold when step `step` is about to start."""
        out, j = [], step
        while j < total and self.weights_step(j) < step:
            out.append(j)
            j += 1
        return out


@dataclass
class Rollout:
    """One step's generate-call result, made before the step ran.

    data:    the step's prompt rows (the graph's data keys), as the loop would have read them.
    outputs: the generate call's outputs (algorithms/graphs.GENERATE_OUTPUTS, one row per sample).
    version: the policy version that generated every sample (also per sample in outputs).
    position: the data position of the first prompt; `len(data)` prompts were consumed.
    """

    step: int
    version: int
    position: int
    data: Batch
    outputs: Batch
    stats: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0


class RolloutQueue:
    """Rollouts in step order, at most `capacity` of them; `take(step)` is the head or an error."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self.items: deque[Rollout] = deque()

    def __len__(self) -> int:
        return len(self.items)

    def steps(self) -> list[int]:
        return [r.step for r in self.items]

    def next_step(self, default: int) -> int:
        """The step the next rollout put here must be for."""
        return self.items[-1].step + 1 if self.items else default

    def next_position(self, default: int) -> int:
        """The data position the next rollout's prompts start at."""
        return self.items[-1].position + len(self.items[-1].data) if self.items else default

    def put(self, rollout: Rollout) -> None:
        if len(self.items) >= self.capacity:
            raise RuntimeError(f"rollout queue full ({self.capacity}): step {rollout.step} made too early")
        if self.items and rollout.step != self.items[-1].step + 1:
            raise RuntimeError(f"rollout for step {rollout.step} after step {self.items[-1].step}")
        self.items.append(rollout)

    def take(self, step: int) -> Rollout:
        if not self.items or self.items[0].step != step:
            raise RuntimeError(f"step {step}: the rollout queue holds steps {self.steps()}")
        return self.items.popleft()


def staleness_stats(lags: list[int], bound: int, step: int) -> dict[str, float]:
    """Per-sample staleness (trainer version − generating version) → the step's histogram
    (`staleness/k`: the fraction of samples k versions old, k = 0..bound), mean and max.
    StalenessError when a sample is older than `bound` or from a version the trainer has not made."""
    if any(lag > bound or lag < 0 for lag in lags):
        raise StalenessError(f"step {step + 1}: samples {sorted(set(lags))} policy versions old; the schedule "
                             f"allows 0..{bound}")
    n = max(len(lags), 1)
    stats = {f"staleness/{k}": sum(lag == k for lag in lags) / n for k in range(bound + 1)}
    stats.update({"staleness_mean": sum(lags) / n, "staleness_max": float(max(lags, default=0))})
    return stats


class InlineRollouts:
    """N off-policy steps in this process: when step j finds the queue empty it generates the
    rollouts of steps j .. (the end of j's block of N) now, with the current weights, one generate
    call per step (each with its own step's seed and prompts). Same interface as
    runtime/async_rollouts.AsyncRollouts: restore, next, consumed, saved, close."""

    def __init__(self, schedule: RolloutSchedule, total_steps: int, generate, first_position: int):
        """`generate(step, position)` → the Rollout of `step` from the current weights."""
        self.schedule, self.total, self.generate = schedule, total_steps, generate
        self.queue = RolloutQueue(capacity=schedule.off_policy_steps)
        self.first_position = first_position

    def restore(self, rollouts: list[Rollout]) -> None:
        for rollout in rollouts:
            if rollout.step < self.total:
                self.queue.put(rollout)

    def next(self, step: int, version: int) -> tuple[Rollout, float]:
        started = time.perf_counter()
        if not self.queue.items:
            block_end = min(self.total, self.schedule.off_policy_steps * (step // self.schedule.off_policy_steps + 1))
            position = self.first_position
            for j in range(step, block_end):
                rollout = self.generate(j, position)
                self.queue.put(rollout)
                position += len(rollout.data)
        if self.queue.items[0].step != step:
            raise RuntimeError(f"step {step}: the rollout queue holds steps {self.queue.steps()}")
        return self.queue.items[0], time.perf_counter() - started

    def consumed(self, step: int) -> None:
        rollout = self.queue.take(step)
        self.first_position = rollout.position + len(rollout.data)

    def saved(self, step: int) -> list[Rollout]:
        return list(self.queue.items)

    def close(self) -> None:
        pass


# ------------------------------------------------------------------------------------ checkpoint files
def save_rollouts(rollouts: list[Rollout], directory: Path) -> None:
    """Each rollout as `step_{j:06d}.safetensors` (tensor fields of data and outputs) + `.json` (the rest),
    j = its step counted from 1 as the progress line does (the rollout of step 5 follows checkpoint step_000004)."""
    directory.mkdir(parents=True, exist_ok=True)
    for r in rollouts:
        tensors, lists = {}, {}
        for part, batch in (("data", r.data), ("outputs", r.outputs)):
            for key, value in batch.items():
                if isinstance(value, torch.Tensor):
                    tensors[f"{part}/{key}"] = value.detach().cpu().contiguous()
                else:
                    lists[f"{part}/{key}"] = list(value)
        save_file(tensors, str(directory / f"step_{r.step + 1:06d}.safetensors"))
        meta = {"step": r.step, "version": r.version, "position": r.position, "stats": r.stats,
                "seconds": r.seconds, "rows": {"data": len(r.data), "outputs": len(r.outputs)}, "lists": lists}
        try:
            text = json.dumps(meta)
        except TypeError as exc:
            raise UserError(f"cannot checkpoint the rollout of step {r.step + 1}: a prompt field is not JSON ({exc})") from None
        (directory / f"step_{r.step + 1:06d}.json").write_text(text, encoding="utf-8")


def load_rollouts(directory: Path) -> list[Rollout]:
    """The rollouts saved by `save_rollouts`, in step order ([] when the checkpoint has none)."""
    if not directory.is_dir():
        return []
    out = []
    for meta_path in sorted(directory.glob("step_*.json")):
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
            tensors = load_file(str(meta_path.with_suffix(".safetensors")))
            parts = {"data": {}, "outputs": {}}
            for name, value in [*tensors.items(), *meta["lists"].items()]:
                part, key = name.split("/", 1)
                parts[part][key] = value
            out.append(Rollout(int(meta["step"]), int(meta["version"]), int(meta["position"]),
                               Batch(parts["data"], rows=meta["rows"]["data"]),
                               Batch(parts["outputs"], rows=meta["rows"]["outputs"]),
                               {k: float(v) for k, v in meta["stats"].items()}, float(meta["seconds"])))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise UserError(f"{meta_path}: malformed queued rollout ({type(exc).__name__}: {exc})") from None
    steps = [r.step for r in out]
    if steps and steps != list(range(steps[0], steps[0] + len(steps))):
        raise UserError(f"{directory}: queued rollouts are not consecutive steps ({steps})")
    return out
