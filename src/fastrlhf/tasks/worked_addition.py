"""Built-in task: multi-digit addition with the working shown, column by column.

The responses are long and long-tailed in length (a 1-digit sum takes ~10 tokens, an 8-digit one
~80), which is the workload speculative decoding is meant for; the reward only checks the answer.

Prompt, exactly as in `arithmetic`::

    "{a}+{b}="        e.g. "47+815="

Each operand's digit count d is drawn independently: from `DIGIT_WEIGHTS` (relative weights over
1..8, long-tailed: mostly 1-3 digits, now and then up to 8), or uniformly from `digits` when the
caller passes them (`task.digits`). A d-digit operand is 0-9 for d = 1, else 10**(d-1) .. 10**d - 1.

Response (`working(a, b)`; the trainer / engine append EOS, it is not part of the text): one column
per digit position, least significant first, separated by single spaces, each written
"{x}+{y}+{c}={s}" — x, y that column's digits of a and b (0 once an operand has run out of digits),
c the carry into the column (0 or 1), s = x + y + c in decimal (0..19). There are
max(digits of a, digits of b) columns. Then "\\n" and the decimal sum::

    "47+815="  ->  "7+5+0=12 4+1+1=6 0+8+0=8\\n862"
    "5+7="     ->  "5+7+0=12\\n12"            (a final carry shows only in the answer)

Answer parsing (`parse_answer`), exactly: the answer is the run of ASCII digits, optionally preceded
by one '-', that starts immediately after the first "\\n" of the completion; anything after that run
is ignored. No "\\n", or a first "\\n" not followed directly by a digit or '-digit', gives no answer.
So "...\\n862", "...\\n862 junk" and "\\n862\\n5" parse as 862; "862" (no newline), "...\\n 862",
"...\\n\\n862" and "...\\nx862" have no answer; the working before the "\\n" is never read.

Reward (`reward`, TRL convention): 1.0 when the parsed answer equals the row's `answer` field (a+b),
else 0.0. The working is not checked: a policy may learn to skip or garble it, which
`is_well_formed` (format only, not arithmetic) lets evaluations watch.

Splits: as in `arithmetic` (whose machinery this module reuses), held-out-ness is a salted hash of
the prompt with this task's own salt (`SPLIT_SALT`), independent of the seed; about
`arithmetic.HELD_OUT_PERCENT`% of problems are held out; training problems are addressed by index.

SFT demonstrations (`sft_demonstrations`) come from a flawed annotator: with probability
`carry_drop` per demonstration (fixed by (seed, index)) the annotator forgets to carry. The careless
working is self-consistent column arithmetic without carrying: every column is written
"{x}+{y}+0={x+y}" (c is always 0, s = x + y, which can be 10..18), and the answer line is
`arithmetic.carry_free_sum(a, b)` — the last digit of each column's s, most significant first, with
no leading carry (`careless_working`). "47+815=" -> "7+5+0=12 4+1+0=5 0+8+0=8\\n852". A policy
imitating it gets carry problems wrong; RL with the exact-answer reward has a systematic flaw to fix.

Left out: checking the working in the reward, subtraction, reversed answers.
"""

from __future__ import annotations

import random
import re
from typing import Iterable

from fastrlhf.tasks import MAX_NEW_TOKENS
from fastrlhf.tasks.arithmetic import (EVAL_STREAM_SEED, Problem, _check_digits, _distinct_held_out,
                                       _problem_in_split, carry_free_sum, is_held_out as _is_held_out)

DIGIT_WEIGHTS: dict[int, float] = {1: 8, 2: 8, 3: 6, 4: 4, 5: 2, 6: 1, 7: 1, 8: 1}  # relative
SPLIT_SALT = "fastrlhf-worked-addition-split-v1"  # changing this changes every split: don't.
# rollout.max_new_tokens default: covers 8-digit operands (8 columns of <= 8 chars + 7 spaces + "\n" + 9 digits
# + EOS = 82 tokens)
DEFAULT_MAX_NEW_TOKENS = MAX_NEW_TOKENS["worked_addition"]
STREAM_PREFIX = "worked"  # the RNG streams differ from arithmetic's even for the same digits

__all__ = ["DIGIT_WEIGHTS", "EVAL_STREAM_SEED", "Problem", "accuracy", "careless_working", "eval_rows",
           "is_held_out", "is_well_formed", "parse_answer", "reward", "sft_demonstrations", "train_problem",
           "train_rows", "working"]

_ANSWER_RE = re.compile(r"-?[0-9]+")
_TRACE_RE = re.compile(r"[0-9]\+[0-9]\+[01]=1?[0-9]( [0-9]\+[0-9]\+[01]=1?[0-9])*\n-?[0-9]+")


def _sizes(digits: Iterable[int] | None) -> tuple[tuple[int, ...], tuple[float, ...] | None]:
    """(digit counts, their weights): the long-tailed default, or `digits` drawn uniformly."""
    if digits is None:
        return tuple(DIGIT_WEIGHTS), tuple(DIGIT_WEIGHTS.values())
    return _check_digits(digits), None


def _problem(stream: str, index: int, seed: int, digits, held_out: bool) -> Problem:
    sizes, weights = _sizes(digits)
    return _problem_in_split(f"{STREAM_PREFIX}-{stream}", index, seed, sizes, held_out, weights, SPLIT_SALT)


def is_held_out(problem: Problem) -> bool:
    """True when `problem` belongs to this task's held-out split; seed-independent."""
    return _is_held_out(problem, SPLIT_SALT)


def train_problem(index: int, seed: int, digits: Iterable[int] | None = None) -> Problem:
    """The `index`-th training problem for `seed` (never a held-out problem)."""
    return _problem("train", index, seed, digits, held_out=False)


def train_rows(start: int, count: int, seed: int, digits: Iterable[int] | None = None) -> list[dict]:
    """Rows `start .. start+count-1` of the training prompt stream: {"prompt", "answer"}."""
    return [train_problem(i, seed, digits).row() for i in range(start, start + count)]


def eval_rows(count: int, digits: Iterable[int] | None = None) -> list[dict]:
    """`count` distinct held-out problems, the same for every training seed (ValueError when that
    many distinct ones are not found, e.g. digits=[1])."""
    sizes, weights = _sizes(digits)
    problems = _distinct_held_out(count, sizes, weights, SPLIT_SALT)  # stream "eval", EVAL_STREAM_SEED
    return [problem.row() for problem in problems]


def _columns(a: int, b: int) -> list[tuple[int, int]]:
    """(x, y) digit pairs, least significant first; max(len(str(a)), len(str(b))) of them."""
    width = max(len(str(a)), len(str(b)))
    return [((a // 10**i) % 10, (b // 10**i) % 10) for i in range(width)]


def working(a: int, b: int) -> str:
    """The ideal response to "{a}+{b}=" (module docstring), without EOS."""
    if a < 0 or b < 0:
        raise ValueError(f"operands must be non-negative, got {a}, {b}")
    parts, carry = [], 0
    for x, y in _columns(a, b):
        s = x + y + carry
        parts.append(f"{x}+{y}+{carry}={s}")
        carry = s // 10
    return " ".join(parts) + f"\n{a + b}"


def careless_working(a: int, b: int) -> str:
    """The careless annotator's response: no carrying, c = 0 and s = x + y in every column, answer
    `carry_free_sum(a, b)` (module docstring)."""
    if a < 0 or b < 0:
        raise ValueError(f"operands must be non-negative, got {a}, {b}")
    parts = [f"{x}+{y}+0={x + y}" for x, y in _columns(a, b)]
    return " ".join(parts) + f"\n{carry_free_sum(a, b)}"


def sft_demonstrations(count: int, seed: int, digits: Iterable[int] | None = None,
                       carry_drop: float = 0.0) -> list[tuple[str, str]]:
    """`count` (prompt, response) pairs from the training split (own stream, never held out).

    A share `carry_drop` of them (which ones is fixed by (seed, index)) is `careless_working`, the
    rest `working`. Also careless demonstrations of problems without any carry are exactly right.
    """
    if not 0.0 <= carry_drop <= 1.0:
        raise ValueError(f"carry_drop must be in [0, 1], got {carry_drop}")
    pairs = []
    for index in range(count):
        problem = _problem("sft", index, seed, digits, held_out=False)
        careless = random.Random(f"worked-careless-{seed}-{index}").random() < carry_drop
        write = careless_working if careless else working
        pairs.append((problem.prompt, write(problem.a, problem.b)))
    return pairs


def parse_answer(completion: str) -> int | None:
    """The integer right after the first "\\n", or None; rules in the module docstring."""
    newline = completion.find("\n")
    if newline < 0:
        return None
    match = _ANSWER_RE.match(completion, newline + 1)
    return int(match.group(0)) if match else None


def is_well_formed(completion: str) -> bool:
    """True when the completion has the response's format: columns "x+y+c=s" (one digit each for
    x and y, c 0 or 1, s 0..19) separated by single spaces, "\\n", an integer, nothing else.
    Only the format is checked, not the arithmetic or the number of columns."""
    return _TRACE_RE.fullmatch(completion) is not None


def reward(completions: list[str], answer: list, **fields) -> list[float]:
    """Exact-answer reward, TRL convention: 1.0 if `parse_answer(completion) == int(answer)`.

    `answer` holds one expected sum per completion (str or int); other fields are ignored."""
    if len(answer) != len(completions):
        raise ValueError(f"got {len(completions)} completions but {len(answer)} answers")
    return [1.0 if parse_answer(text) == int(expected) else 0.0 for text, expected in zip(completions, answer)]


def accuracy(completions: list[str], answers: list) -> float:
    """Fraction of completions whose parsed answer is exactly right (0.0 for an empty list)."""
    scores = reward(completions, answer=answers)
    return sum(scores) / len(scores) if scores else 0.0
