"""Where a run's prompts and rewards come from: the built-in task or the user's JSONL + reward function.

A `PromptSource` hands out rows (`{"prompt": str, **fields}`) by absolute position in an endless
stream, so a resumed run continues exactly where it stopped (the position is saved in checkpoints):
- built-in arithmetic: problem i of the seeded training stream (held-out problems never appear);
- JSONL: epoch e = position // len(rows) is a seeded permutation of the file's rows.
Fields other than "prompt" reach the reward function as keyword lists (TRL's convention).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from fastrlhf.errors import UserError
from fastrlhf.tasks import arithmetic
from fastrlhf.tasks.prompts import load_prompts
from fastrlhf.tasks.rewards import load_reward


@dataclass
class PromptSource:
    rows_at: Callable[[int, int], list[dict]]  # (position, count) -> rows
    reward_fn: Callable[..., list[float]]
    field_names: tuple[str, ...]  # extra row fields the reward function receives
    eval_rows: list[dict]  # held-out rows (may be empty)
    name: str


def builtin_source(digits, seed: int, eval_size: int, reward: str | None) -> PromptSource:
    digits = tuple(digits or arithmetic.DEFAULT_DIGITS)
    fn = load_reward(reward) if reward else arithmetic.reward
    return PromptSource(
        rows_at=lambda position, count: arithmetic.train_rows(position, count, seed, digits),
        reward_fn=fn, field_names=("answer",), eval_rows=arithmetic.eval_rows(eval_size, digits), name="arithmetic",
    )


def jsonl_source(path: str, reward: str | None, seed: int) -> PromptSource:
    if not reward:
        raise UserError("task.prompts is set but task.reward is not: name a reward function as 'module:function'")
    rows = load_prompts(path)
    fn = load_reward(reward)
    names = sorted({k for row in rows for k in row if k != "prompt"})
    missing = [(i, n) for i, row in enumerate(rows) for n in names if n not in row]
    if missing:
        line, name = missing[0]
        raise UserError(f"{path}: row {line + 1} lacks field {name!r} that other rows pass to the reward")

    def rows_at(position: int, count: int) -> list[dict]:
        out = []
        for p in range(position, position + count):
            epoch, offset = divmod(p, len(rows))
            order = torch.randperm(len(rows), generator=torch.Generator().manual_seed(seed * 7919 + epoch))
            out.append(rows[int(order[offset])])
        return out

    return PromptSource(rows_at=rows_at, reward_fn=fn, field_names=tuple(names), eval_rows=[], name=str(path))


def prompt_source(task, seed: int) -> PromptSource:
    if task.prompts:
        return jsonl_source(task.prompts, task.reward, seed)
    return builtin_source(task.digits, seed, task.eval_size, task.reward)
