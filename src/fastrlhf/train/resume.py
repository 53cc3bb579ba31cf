"""What `fastrlhf train --resume RUN_DIR key=value ...` may change, and how each change is honoured.

A resumed run must continue *the same* run: the checkpoint's config (RUN_DIR/checkpoints/step_N/
config.yaml) is compared with the config in effect after the overrides, key by key.

Honoured (the run continues exactly; only what the key names changes):
- `train.steps`: the run's length. The LR schedule keeps the horizon the run *started* with
  (saved in each checkpoint as `schedule_steps`), so the learning rate never jumps. Steps past that
  horizon run at the schedule's final LR; where that LR is 0 (cosine / linear decay to 0) such
  steps would not train, so a longer run is refused — continue from the policy instead
  (`model.path=RUN_DIR/final` in a new run), or start runs meant to be extended with `lr_decay=none`.
- `train.prompts_per_step`: later steps take that many prompts, continuing from the saved data
  position (no prompt replayed or skipped).
- Bookkeeping that changes no number: `train.eval_every`, `train.checkpoint_every`,
  `train.hang_timeout`, `train.max_nonfinite_skips`, `train.run_dir`, `task.reward_timeout`,
  `task.reward_retries`, `task.reward_batch_size`, `task.eval_size`, `rollout.num_slots`,
  `rollout.compile`, `train.atomic_steps`, and every `runtime.*` key (which backend and how many
  workers: samples are a function of the prompt's identity, not of the worker that draws them).
- Same math, different arithmetic order (results equal up to float rounding, not bit for bit):
  `train.micro_batch_size`, `train.micro_batch_tokens`, `train.device`, `runtime.trainer_workers`; and `model.dtype` (the
  checkpoint holds fp32 master weights whatever the compute precision).
- `task.reward` from one `http(s)://` server address to another (a reward server that moved).

Everything else (model, data, algorithm, learning rate, sampling, seed, ...) is refused with a
one-line error naming the key: the resumed run would not be the run the checkpoint belongs to.
To change those, start a new run from a checkpoint (`model.path=RUN_DIR/checkpoints/step_N`:
each checkpoint is an HF model directory) — with a fresh optimizer.
"""

from __future__ import annotations

from fastrlhf.config import Config
from fastrlhf.errors import UserError

HONOURED = frozenset({
    "train.steps", "train.prompts_per_step", "train.eval_every", "train.checkpoint_every", "train.hang_timeout",
    "train.max_nonfinite_skips", "train.run_dir", "train.micro_batch_size", "train.micro_batch_tokens", "train.device",
    "train.atomic_steps", "model.dtype",
    "task.reward_timeout", "task.reward_retries", "task.reward_batch_size", "task.eval_size",
    "rollout.num_slots", "rollout.compile",
    # where the calls run (docs/runtime.md): rollout tokens are the same on every backend and worker count;
    # trainer ranks change only the order of the gradient sum
    "runtime.backend", "runtime.address", "runtime.rollout_workers", "runtime.trainer_workers", "runtime.rollout_cpus",
    "runtime.trainer_cpus", "runtime.rollout_gpus", "runtime.trainer_gpus", "runtime.balance",
    "runtime.migrate_threshold", "runtime.migrate_with", "runtime.round_seconds", "runtime.stream_scoring",
    "runtime.scoring", "runtime.scoring_cpus", "runtime.scoring_gpus", "runtime.sync_bucket_mb",
    "runtime.max_restarts",
})


def _flat(config: Config) -> dict[str, object]:
    return {f"{section}.{key}": value for section, values in config.to_dict().items() for key, value in values.items()}


def changed_keys(saved: Config, new: Config) -> dict[str, tuple[object, object]]:
    """{key: (saved value, new value)} for every key whose value differs."""
    before, after = _flat(saved), _flat(new)
    return {key: (before[key], after[key]) for key in before if before[key] != after[key]}


def _is_url(value: object) -> bool:
    return isinstance(value, str) and value.startswith(("http://", "https://"))


def check_resume_changes(saved: Config, new: Config, schedule_steps: int) -> list[str]:
    """Refuse (UserError) a change the resumed run cannot honour; else one note per honoured change.

    `schedule_steps`: the LR schedule's horizon in optimizer steps, as saved in the checkpoint."""
    notes = []
    for key, (before, after) in changed_keys(saved, new).items():
        if key == "task.reward" and _is_url(before) and _is_url(after):
            notes.append(f"task.reward: {before} -> {after}")
            continue
        if key not in HONOURED:
            raise UserError(f"--resume: '{key}' cannot change ({before!r} -> {after!r}): the run would no longer "
                            f"be the one its checkpoint belongs to; start a new run from a checkpoint instead "
                            f"(model.path=RUN_DIR/checkpoints/step_N)")
        if key == "train.steps":
            _check_steps(new, int(after), schedule_steps)
        if key != "train.run_dir":
            notes.append(f"{key}: {before!r} -> {after!r}")
    return notes


def _check_steps(config: Config, steps: int, schedule_steps: int) -> None:
    t = config.train
    ends_at_zero = t.lr_decay != "none"
    if steps * t.mini_batches > schedule_steps and ends_at_zero:
        raise UserError(f"--resume: train.steps={steps} goes past the LR schedule, which decays ({t.lr_decay}) to 0 "
                        f"at step {schedule_steps // t.mini_batches}, so the extra steps would not train; continue "
                        f"from the policy in a new run (model.path=RUN_DIR/final) instead")
