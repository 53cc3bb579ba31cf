"""Built-in preference task: "sort the prompt's digits", judged by a hidden gold scorer.

It exercises real RLHF: what humans prefer is defined by a gold scorer the policy never sees;
preference pairs sampled from an SFT policy are labelled by that scorer with Bradley–Terry noise;
a reward model (RM) learns from the pairs; RL then optimises the learned RM and is judged by the
gold scorer (and by KL to the SFT policy).

Prompt: d = 3–5 random digits (repeats allowed) followed by '=', e.g. "7352="; the row's `digits`
field is d ("7352"). The ideal completion is d sorted ("2357"), then EOS.

Gold score of a completion r (a string, EOS not included) for digits d, n = |d|, m = |r|:

    g(d, "") = −2                                    (empty completion: the minimum)
    g(d, r)  = coverage + order − length_penalty − foreign_share
    coverage       = |multiset(r) ∩ multiset(d)| / n          ∈ [0, 1]
    order          = #{i < m−1 : r_i, r_{i+1} both digits and r_i ≤ r_{i+1}} / (m − 1)   (1 when m = 1)
    length_penalty = min(1, |m − n| / n)                       ∈ [0, 1]
    foreign_share  = #{i : r_i is not a digit of d} / m         ∈ [0, 1]  (non-digits are foreign)

so g ∈ [−2, 2], and g = 2 exactly when r = sorted(d): coverage 1 with m = n forces
multiset(r) = multiset(d), and order 1 forces r sorted. Coverage counts digits as a multiset, not
the prompt's distinct digits: with distinct digits "3377" would tie the sorted "3777" for prompt
"7737", and the optimum would not be unique. A random permutation of n distinct digits scores 1.5 on average
(half its adjacent pairs ascend); copying the prompt scores ≈ 1.55 (i.i.d. digits ascend with
probability 0.55).

Noise model (`label_pair`): a labeller prefers a over b with probability
P(a ≻ b) = σ((g(d, a) − g(d, b)) / τ); τ → 0 is the noise-free gold order, equal scores are a coin flip.

SFT data (`sft_demonstrations`) come from a *sloppy annotator* (`ANNOTATOR_MIX`) who mostly copies
the digits in the order given or writes a random permutation, sorts only sometimes, and now and
then drops, duplicates or replaces a digit. A policy that imitates this copies when greedy (far
from the optimum) while its samples at temperature 1 vary in gold score, so RL has room to improve.

Splits: held-out prompts are chosen by a salted hash of the prompt (seed-independent), so no
training stream under any seed contains an evaluation prompt (as in `arithmetic`).

Left out: other orderings (descending, by frequency), prompts with non-digit characters, human
label sources other than the BT model (e.g. Thurstone / ties).
"""

from __future__ import annotations

import hashlib
import math
import random
from collections import Counter
from pathlib import Path

from fastrlhf.errors import UserError

MIN_DIGITS, MAX_DIGITS = 3, 5
HELD_OUT_PERCENT = 10
SPLIT_SALT = "fastrlhf-preference-split-v1"  # changing this changes every split: don't.
EVAL_STREAM_SEED = 4321  # the evaluation set is fixed: the same for every training seed
EMPTY_SCORE = -2.0
MAX_SCORE = 2.0
DIGITS = "0123456789"

# share of demonstrations of each kind written by the sloppy annotator (sums to 1)
ANNOTATOR_MIX = {"copy": 0.40, "permute": 0.30, "sort": 0.10, "drop": 0.07, "duplicate": 0.07, "foreign": 0.06}

DATA_DIR = Path(__file__).parent / "preference_data"  # made by scripts/make_preference_task.py
SPLITS = ("train", "eval")


# ------------------------------------------------------------------ prompts and splits
def format_prompt(digits: str) -> str:
    return f"{digits}="


def row(digits: str) -> dict:
    """The prompt row as a dataset gives it: `prompt` plus the `digits` field the gold reward needs."""
    return {"prompt": format_prompt(digits), "digits": digits}


def is_held_out(digits: str) -> bool:
    """True when the prompt of `digits` belongs to the held-out (evaluation) split; seed-independent."""
    key = f"{SPLIT_SALT}:{format_prompt(digits)}".encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "big") % 100 < HELD_OUT_PERCENT


def _digits_in_split(stream: str, index: int, seed: int, held_out: bool) -> str:
    """The `index`-th digit string of a stream: draws from a per-index RNG until the split matches."""
    rng = random.Random(f"preference/{stream}/{seed}/{index}")  # str seeds hash with sha512: stable
    while True:
        digits = "".join(rng.choice(DIGITS) for _ in range(rng.randint(MIN_DIGITS, MAX_DIGITS)))
        if is_held_out(digits) == held_out:
            return digits


def train_rows(start: int, count: int, seed: int) -> list[dict]:
    """Rows `start .. start+count-1` of the endless training stream for `seed` (repeats possible)."""
    return [row(_digits_in_split("train", i, seed, held_out=False)) for i in range(start, start + count)]


def eval_rows(count: int) -> list[dict]:
    """`count` distinct held-out rows, the same for every training seed."""
    seen: dict[str, None] = {}  # insertion-ordered set
    for index in range(100 * count + 10_000):
        if len(seen) == count:
            break
        seen.setdefault(_digits_in_split("eval", index, EVAL_STREAM_SEED, held_out=True), None)
    if len(seen) < count:
        raise ValueError(f"cannot draw {count} distinct held-out prompts")
    return [row(digits) for digits in seen]


# ------------------------------------------------------------------ the hidden gold scorer
def gold_score(digits: str, completion: str) -> float:
    """g(d, r) of the module docstring: 2.0 for sorted(d), −2.0 for an empty completion."""
    n, m = len(digits), len(completion)
    if n == 0:
        raise ValueError("gold_score: empty digit string")
    if m == 0:
        return EMPTY_SCORE
    coverage = sum((Counter(completion) & Counter(digits)).values()) / n
    ascending = sum(a.isdigit() and b.isdigit() and a <= b for a, b in zip(completion, completion[1:]))
    order = ascending / (m - 1) if m > 1 else 1.0
    length_penalty = min(1.0, abs(m - n) / n)
    foreign_share = sum(c not in digits for c in completion) / m
    return coverage + order - length_penalty - foreign_share


def gold_reward(completions: list[str], digits: list[str], **fields) -> list[float]:
    """Reward-function form (TRL convention): one gold score per completion; other fields ignored."""
    if len(digits) != len(completions):
        raise ValueError(f"got {len(completions)} completions but {len(digits)} digit strings")
    return [gold_score(d, c) for c, d in zip(completions, digits)]


# ------------------------------------------------------------------ SFT demonstrations
def sloppy_response(digits: str, rng: random.Random, mix: dict[str, float] = ANNOTATOR_MIX) -> str:
    """One response by the sloppy annotator: a kind drawn from `mix`, then that kind's answer."""
    kind = rng.choices(list(mix), weights=list(mix.values()))[0]
    if kind == "copy":
        return digits
    if kind == "sort":
        return "".join(sorted(digits))
    chars = list(digits)
    rng.shuffle(chars)
    position = rng.randrange(len(chars))
    if kind == "drop":
        del chars[position]
    elif kind == "duplicate":
        chars.insert(position, chars[position])
    elif kind == "foreign":
        chars[position] = rng.choice([c for c in DIGITS if c not in digits] or DIGITS)
    elif kind != "permute":
        raise ValueError(f"unknown annotator kind {kind!r}")
    return "".join(chars)


def sft_demonstrations(count: int, seed: int, mix: dict[str, float] = ANNOTATOR_MIX) -> list[tuple[str, str]]:
    """`count` (prompt, response) pairs from the training split, responses by the sloppy annotator.

    The response has no EOS (the SFT trainer appends it). Uses its own stream (independent of
    `train_rows` for the same seed) and never a held-out prompt.
    """
    pairs = []
    for index in range(count):
        digits = _digits_in_split("sft", index, seed, held_out=False)
        rng = random.Random(f"preference/annotator/{seed}/{index}")
        pairs.append((format_prompt(digits), sloppy_response(digits, rng, mix)))
    return pairs


# ------------------------------------------------------------------ noisy preference labels
def preference_probability(score_a: float, score_b: float, temperature: float) -> float:
    """Bradley–Terry: P(a ≻ b) = σ((g_a − g_b) / τ); τ = 0 gives the noise-free order (ties: ½)."""
    if temperature < 0:
        raise ValueError(f"temperature must be ≥ 0, got {temperature}")
    gap = score_a - score_b
    if temperature == 0:
        return 1.0 if gap > 0 else 0.0 if gap < 0 else 0.5
    z = gap / temperature
    return 1.0 / (1.0 + math.exp(-z)) if z >= 0 else math.exp(z) / (1.0 + math.exp(z))


def label_pair(digits: str, a: str, b: str, rng: random.Random, temperature: float) -> tuple[str, str]:
    """(chosen, rejected): a wins with probability σ((g(d, a) − g(d, b)) / τ), one draw from `rng`."""
    p_a = preference_probability(gold_score(digits, a), gold_score(digits, b), temperature)
    return (a, b) if rng.random() < p_a else (b, a)


# ------------------------------------------------------------------ shipped artifacts
def _require(path: Path, what: str) -> Path:
    if not path.exists():
        raise UserError(f"{path}: missing ({what} of the preference task is package data; "
                        "reinstall fastrlhf or run scripts/make_preference_task.py)")
    return path


def policy_dir() -> Path:
    """The shipped SFT policy (HF directory with tokenizer) that preference pairs were sampled from."""
    directory = DATA_DIR / "policy"
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        _require(directory / name, "the SFT policy")
    return directory


def reward_model_dir() -> Path:
    """The shipped reward model (HF *ForSequenceClassification directory with tokenizer)."""
    directory = DATA_DIR / "reward_model"
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        _require(directory / name, "the reward model")
    return directory


def pairs_path(split: str) -> Path:
    """The shipped preference pairs of `split` ("train" or "eval"): JSONL rows {prompt, chosen, rejected, digits}."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    return _require(DATA_DIR / f"pairs_{split}.jsonl", f"the {split} preference pairs")
