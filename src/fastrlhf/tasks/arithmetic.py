"""Built-in task: multi-digit addition with an exact-match reward.

A tiny (~1M-4M parameter) model can learn this on a CPU in minutes, and mixing operand sizes gives
GRPO groups with both right and wrong answers, so the reward has room to rise.

Prompt format (one line, no spaces, no trailing newline)::

    "{a}+{b}="        e.g. "47+815="

The expected completion is the decimal sum followed by the end-of-sequence token, e.g. "862".
`a` and `b` are non-negative integers whose digit counts are drawn uniformly from `digits`
(a 1-digit operand is 0-9, a d-digit operand with d > 1 is 10**(d-1) .. 10**d - 1).

Answer parsing (`parse_answer`), exactly: leading spaces are skipped; the answer is the longest
run of ASCII digits that follows, optionally preceded by one '-'; everything after that run
(spaces, newlines, '=', letters, more text) is ignored. A completion that does not start (after
spaces) with a digit or '-digit' has no answer. So "862", " 862", "862\\n17+1=18" and "862 junk" all
parse as 862, while "x862", "", "=862" and "8 62" (parses as 8) do not give 862.

Reward (`reward`): 1.0 when the parsed answer equals the row's `answer` field, else 0.0.

Splits: whether a problem is held out depends only on the problem itself (a salted hash of its
prompt), never on the seed, so no training stream under any seed contains an evaluation problem.
About `HELD_OUT_PERCENT`% of all problems are held out. Training problems are addressed by index
(`train_problem(index, seed)`), so a resumed run can continue the stream from a saved position.

Left out: subtraction / multiplication, carries-only curricula and reversed-digit answers (which
make addition easier for transformers); add them as options if the default proves too easy/hard.
"""

from __future__ import annotations

import hashlib
import random
import re
from dataclasses import dataclass
from typing import Iterable

DEFAULT_DIGITS: tuple[int, ...] = (1, 2, 3)
HELD_OUT_PERCENT = 10
SPLIT_SALT = "fastrlhf-arithmetic-split-v1"  # changing this changes every split: don't.
EVAL_STREAM_SEED = 1234  # the evaluation set is fixed: the same for every training seed

_ANSWER_RE = re.compile(r" *(-?[0-9]+)")


@dataclass(frozen=True)
class Problem:
    """One addition problem `a + b`."""

    a: int
    b: int

    @property
    def prompt(self) -> str:
        return format_prompt(self.a, self.b)

    @property
    def answer(self) -> int:
        return self.a + self.b

    def row(self) -> dict:
        """The prompt row as a dataset gives it: `prompt` plus the fields the reward needs."""
        return {"prompt": self.prompt, "answer": str(self.answer)}


def format_prompt(a: int, b: int) -> str:
    return f"{a}+{b}="


def is_held_out(problem: Problem, salt: str = SPLIT_SALT) -> bool:
    """True when `problem` belongs to the held-out (evaluation) split; seed-independent.

    `salt` names the task's split (another task built on these problems passes its own)."""
    digest = hashlib.blake2b(f"{salt}:{problem.prompt}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % 100 < HELD_OUT_PERCENT


def _check_digits(digits: Iterable[int]) -> tuple[int, ...]:
    digits = tuple(digits)
    if not digits or any(not isinstance(d, int) or d < 1 or d > 18 for d in digits):
        raise ValueError(f"digits must be a non-empty list of integers in 1..18, got {digits}")
    return digits


def _random_operand(rng: random.Random, digits: tuple[int, ...], weights: tuple[float, ...] | None = None) -> int:
    """An operand whose digit count is drawn from `digits`: uniformly (`weights` None), else with
    those relative `weights` (one per entry of `digits`)."""
    size = rng.choice(digits) if weights is None else rng.choices(digits, weights)[0]
    low = 0 if size == 1 else 10 ** (size - 1)
    return rng.randint(low, 10**size - 1)


def _problem_in_split(stream: str, index: int, seed: int, digits, held_out: bool,
                      weights: tuple[float, ...] | None = None, salt: str = SPLIT_SALT) -> Problem:
    """The `index`-th problem of a stream: draws from a per-index RNG until the split matches.

    `weights` and `salt` let other tasks reuse this with their own size distribution and split;
    the defaults give this task's streams."""
    rng = random.Random(f"{stream}/{seed}/{index}")  # str seeds hash with sha512: stable
    while True:
        problem = Problem(_random_operand(rng, digits, weights), _random_operand(rng, digits, weights))
        if is_held_out(problem, salt) == held_out:
            return problem


def _distinct_held_out(count: int, digits: tuple[int, ...], weights: tuple[float, ...] | None = None,
                       salt: str = SPLIT_SALT) -> list[Problem]:
    """`count` distinct held-out problems from the fixed evaluation stream (see `eval_rows`)."""
    seen: dict[Problem, None] = {}  # insertion-ordered set
    for index in range(100 * count + 10_000):
        if len(seen) == count:
            break
        seen.setdefault(_problem_in_split("eval", index, EVAL_STREAM_SEED, digits, True, weights, salt), None)
    if len(seen) < count:
        raise ValueError(f"cannot draw {count} distinct held-out problems for digits {digits}")
    return list(seen)


def train_problem(index: int, seed: int, digits: Iterable[int] = DEFAULT_DIGITS) -> Problem:
    """The `index`-th training problem for `seed` (never a held-out problem)."""
    return _problem_in_split("train", index, seed, _check_digits(digits), held_out=False)


def train_rows(start: int, count: int, seed: int, digits=DEFAULT_DIGITS) -> list[dict]:
    """Rows `start .. start+count-1` of the training prompt stream (repeats are possible)."""
    return [train_problem(i, seed, digits).row() for i in range(start, start + count)]


def eval_rows(count: int, digits: Iterable[int] = DEFAULT_DIGITS) -> list[dict]:
    """`count` distinct held-out problems, the same for every training seed.

    Raises ValueError when that many distinct held-out problems are not found within
    `100 * count + 10_000` draws (e.g. digits=[1] has only about 10 held-out problems).
    """
    return [problem.row() for problem in _distinct_held_out(count, _check_digits(digits))]


def carry_free_sum(a: int, b: int) -> int:
    """a + b as a careless annotator writes it: each column summed mod 10, every carry dropped
    (47 + 815 → 852 instead of 862). Equals a + b exactly when no column carries."""
    out, place = 0, 1
    while a or b:
        out += ((a % 10 + b % 10) % 10) * place
        a, b, place = a // 10, b // 10, place * 10
    return out


def sft_demonstrations(count: int, seed: int, digits=DEFAULT_DIGITS, carry_drop: float = 0.0) -> list[tuple[str, str]]:
    """`count` (prompt, response) pairs from the training split for supervised warm-up.

    The response is the bare answer ("862"); the trainer appends the tokenizer's EOS token. Uses its
    own stream (independent of `train_rows` for the same seed) and never a held-out problem.

    `carry_drop` is the share of demonstrations written by a careless annotator who drops carries
    (`carry_free_sum`); which ones is fixed by (seed, index). Above 0.5, a policy that imitates the
    demonstrations answers carry problems wrongly when greedy: a systematic flaw of its SFT data
    that the exact-match reward exposes and RL can unlearn.
    """
    if not 0.0 <= carry_drop <= 1.0:
        raise ValueError(f"carry_drop must be in [0, 1], got {carry_drop}")
    digits = _check_digits(digits)
    pairs = []
    for index in range(count):
        problem = _problem_in_split("sft", index, seed, digits, held_out=False)
        careless = random.Random(f"careless-{seed}-{index}").random() < carry_drop
        answer = carry_free_sum(problem.a, problem.b) if careless else problem.answer
        pairs.append((problem.prompt, str(answer)))
    return pairs


def parse_answer(completion: str) -> int | None:
    """The integer a completion answers with, or None; rules in the module docstring."""
    match = _ANSWER_RE.match(completion)
    return int(match.group(1)) if match else None


def reward(completions: list[str], answer: list, **fields) -> list[float]:
    """Exact-match reward, TRL convention: 1.0 if `parse_answer(completion) == int(answer)`.

    `answer` holds one expected sum per completion (str or int); other fields are ignored.
    """
    if len(answer) != len(completions):
        raise ValueError(f"got {len(completions)} completions but {len(answer)} answers")
    return [
        1.0 if parse_answer(text) == int(expected) else 0.0
        for text, expected in zip(completions, answer)
    ]


def accuracy(completions: list[str], answers: list) -> float:
    """Fraction of completions whose parsed answer is exactly right (0.0 for an empty list)."""
    scores = reward(completions, answer=answers)
    return sum(scores) / len(scores) if scores else 0.0
