"""Where a run's data and rewards come from: a built-in task, the user's prompt JSONL, or preference pairs.

A `PromptSource` hands out rows by absolute position in an endless stream, so a resumed run
continues exactly where it stopped (the position is saved in checkpoints):
- built-in arithmetic / preference / worked_addition: row i of the task's seeded training stream
  (held-out rows never appear in it), or with `task.train_size` = N its first N rows in seeded epochs
  (like a JSONL file); `BUILTIN_SOURCES` maps each task name to its builder;
- JSONL (prompts or preference pairs): epoch e = position // len(rows) is a seeded permutation of
  the file's rows.
Fields other than "prompt" reach the reward function as keyword lists (TRL's convention).

`reward` is what `train.reward_workers.reward_worker` turns into the reward role: a callable, or the
user's `task.reward` string (module:function, file.py:function, http(s) URL, reward-model directory).
The preference task's default reward is its shipped *learned* reward model; its hidden gold scorer
is used only for evaluation.

`prompt_batch` / `pair_batch` build an iteration's data: prompt text (+ reward fields) for online
algorithms; tokenised (chosen, rejected) rows, interleaved, for offline DPO.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from fastrlhf.dataflow.batch import Batch
from fastrlhf.errors import UserError
from fastrlhf.tasks import arithmetic
from fastrlhf.tasks.prompts import load_prompts


@dataclass
class PromptSource:
    rows_at: Callable[[int, int], list[dict]]  # (position, count) -> rows
    reward: object  # a callable, or a reward spec string (see module docstring)
    field_names: tuple[str, ...]  # extra row fields the reward function receives
    eval_rows: list[dict]  # held-out rows (may be empty)
    name: str  # a built-in task name ("arithmetic", ...) or the JSONL path


def epoch_stream(rows: list[dict], seed: int) -> Callable[[int, int], list[dict]]:
    """rows_at(position, count) over endless epochs, each a seeded permutation of `rows`."""
    def rows_at(position: int, count: int) -> list[dict]:
        out = []
        for p in range(position, position + count):
            epoch, offset = divmod(p, len(rows))
            order = torch.randperm(len(rows), generator=torch.Generator().manual_seed(seed * 7919 + epoch))
            out.append(rows[int(order[offset])])
        return out

    return rows_at


def arithmetic_source(task, seed: int) -> PromptSource:
    digits = tuple(task.digits or arithmetic.DEFAULT_DIGITS)
    return PromptSource(
        rows_at=lambda position, count: arithmetic.train_rows(position, count, seed, digits),
        reward=task.reward or arithmetic.reward, field_names=("answer",),
        eval_rows=arithmetic.eval_rows(task.eval_size, digits), name="arithmetic",
    )


def worked_addition_source(task, seed: int) -> PromptSource:
    from fastrlhf.tasks import worked_addition

    digits = tuple(task.digits) if task.digits else None  # None: the task's long-tailed sizes
    return PromptSource(
        rows_at=lambda position, count: worked_addition.train_rows(position, count, seed, digits),
        reward=task.reward or worked_addition.reward, field_names=("answer",),
        eval_rows=worked_addition.eval_rows(task.eval_size, digits), name="worked_addition",
    )


def preference_source(task, seed: int) -> PromptSource:
    from fastrlhf.tasks import preference

    eval_size, reward = task.eval_size, task.reward
    return PromptSource(
        rows_at=lambda position, count: preference.train_rows(position, count, seed),
        reward=reward or str(preference.reward_model_dir()), field_names=("digits",),
        eval_rows=preference.eval_rows(eval_size), name="preference",
    )


def jsonl_source(path: str, reward: str | None, seed: int) -> PromptSource:
    if not reward:
        raise UserError("task.prompts is set but task.reward is not: name a reward function as 'module:function', "
                        "a reward-model directory or an http(s):// reward server")
    rows = load_prompts(path)
    names = sorted({k for row in rows for k in row if k != "prompt"})
    missing = [(i, n) for i, row in enumerate(rows) for n in names if n not in row]
    if missing:
        line, name = missing[0]
        raise UserError(f"{path}: row {line + 1} lacks field {name!r} that other rows pass to the reward")
    return PromptSource(rows_at=epoch_stream(rows, seed), reward=reward, field_names=tuple(names), eval_rows=[],
                        name=str(path))


def pairs_source(task, seed: int) -> PromptSource:
    """Preference pairs for offline DPO: the user's `task.preferences`, else the preference task's."""
    from fastrlhf.tasks.examples import load_preference_pairs

    if task.preferences:
        return PromptSource(epoch_stream(load_preference_pairs(task.preferences), seed), None, (), [],
                            str(task.preferences))
    if task.name != "preference":
        raise UserError(f"algorithm.name=dpo trains on preference pairs: set task.preferences=PAIRS.jsonl "
                        f"(or task.name=preference for the built-in ones); task.name is {task.name!r}")
    from fastrlhf.tasks import preference

    pairs = load_preference_pairs(preference.pairs_path("train"))
    return PromptSource(epoch_stream(pairs, seed), None, (), preference.eval_rows(task.eval_size), "preference")


def prompt_source(task, seed: int, pairs: bool = False) -> PromptSource:
    """The run's data: preference pairs (`pairs`, offline DPO), else prompts of the task / JSONL."""
    if pairs:
        return pairs_source(task, seed)
    if task.prompts:
        return jsonl_source(task.prompts, task.reward, seed)
    source = BUILTIN_SOURCES[task.name](task, seed)
    if task.train_size:  # a finite dataset: the stream's first N rows, in seeded epochs
        source.rows_at = epoch_stream(source.rows_at(0, task.train_size), seed)
    return source


# built-in task name -> builder(task section, seed); config checks task.name against tasks.BUILTIN_TASKS
BUILTIN_SOURCES: dict[str, Callable[..., PromptSource]] = {
    "arithmetic": arithmetic_source, "preference": preference_source, "worked_addition": worked_addition_source,
}


# ---------------------------------------------------------------------------- iteration data
def prompt_batch(rows: list[dict], field_names: tuple[str, ...]) -> Batch:
    """Prompts (+ the reward's extra fields) of one iteration, one row per prompt."""
    return Batch({"prompts": [r["prompt"] for r in rows], **{n: [r[n] for r in rows] for n in field_names}})


def pair_batch(rows: list[dict], tokenizer) -> Batch:
    """Tokenised pairs as rows [chosen₀, rejected₀, chosen₁, ...]: prompt + response + EOS each.

    sequences / attention_mask / response_mask [2P, T], right-padded (algorithms/graphs.py fields).
    """
    from fastrlhf.train.padding import pack_sequences

    eos = tokenizer.eos_token_id
    if eos is None:
        raise UserError("the policy's tokenizer has no EOS token; preference pairs need one to end responses")
    prompts, responses = [], []
    for row in rows:
        prompt = tokenizer.encode_prompt(row["prompt"])
        for key in ("chosen", "rejected"):
            prompts.append(prompt)
            responses.append(tokenizer.encode(row[key]) + [eos])
    sequences, attention_mask, response_mask = pack_sequences(prompts, responses, tokenizer.pad_token_id)
    return Batch({"sequences": sequences, "attention_mask": attention_mask, "response_mask": response_mask})
