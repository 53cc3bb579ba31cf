"""The preference task: hand-worked gold scores, the unique optimum, disjoint splits, BT label noise."""

import itertools
import math
import random

import pytest

from fastrlhf.errors import UserError
from fastrlhf.tasks import preference as P


@pytest.mark.parametrize("digits, completion, expected", [
    ("7352", "2357", 2.0),                    # the optimum: sorted
    ("7352", "7352", 1 + 1 / 3),              # copy: only 3→5 ascends
    ("7352", "", -2.0),                       # empty
    ("7352", "23577", 1 + 1 - 1 / 4),         # one digit too many: length penalty 1/4
    ("7352", "2a57", 3 / 4 + 1 / 3 - 1 / 4),  # 'a' is foreign: coverage 3/4, only 5→7 ascends
    ("7352", "9", 0 + 1 - 3 / 4 - 1),         # one foreign digit: order 1 (no pairs)
    ("7737", "3377", 3 / 4 + 1 - 0 - 0),      # multiset coverage: only one 3 and two 7s match
    ("123", "1234567890", 1 + 8 / 9 - 1 - 7 / 10),  # coverage 1, 8 of 9 pairs ascend, length penalty capped at 1
])
def test_gold_score_hand_worked(digits, completion, expected):
    assert P.gold_score(digits, completion) == pytest.approx(expected, abs=1e-12)


def test_sorted_is_the_unique_maximum():
    rng = random.Random(0)
    for digits in ("7352", "7737", "90210", "555"):
        best = "".join(sorted(digits))
        candidates = {"".join(p) for p in itertools.permutations(digits)}
        candidates |= {"".join(rng.choice("0123456789 =") for _ in range(rng.randint(1, 7))) for _ in range(3000)}
        candidates |= {best[:-1], best + best[-1], best.replace(best[0], "0" if best[0] != "0" else "1", 1)}
        scores = {c: P.gold_score(digits, c) for c in candidates}
        assert scores[best] == P.MAX_SCORE
        assert all(s < P.MAX_SCORE for c, s in scores.items() if c != best)
        assert all(P.EMPTY_SCORE <= s for s in scores.values())


def test_gold_reward_form():
    assert P.gold_reward(["2357", ""], digits=["7352", "7352"], prompt=["x", "y"]) == [2.0, -2.0]
    with pytest.raises(ValueError, match="2 completions but 1"):
        P.gold_reward(["1", "2"], digits=["12"])


def test_splits_are_disjoint_and_streams_addressable():
    held_out = {r["prompt"] for r in P.eval_rows(300)}
    assert len(held_out) == 300 and all(P.is_held_out(p[:-1]) for p in held_out)
    for seed in (0, 1):
        train = P.train_rows(0, 3000, seed)
        assert not held_out & {r["prompt"] for r in train}
        assert P.train_rows(100, 5, seed) == train[100:105]
        assert all(r["prompt"] == r["digits"] + "=" and 3 <= len(r["digits"]) <= 5 for r in train)
    assert not held_out & {p for p, _ in P.sft_demonstrations(3000, seed=0)}
    assert P.train_rows(0, 50, 0) != P.train_rows(0, 50, 1)
    assert P.eval_rows(20) == P.eval_rows(300)[:20]


def test_sloppy_demonstrations_vary_and_are_mostly_not_sorted():
    demos = P.sft_demonstrations(4000, seed=0)
    assert demos == P.sft_demonstrations(4000, seed=0)
    digits = [p[:-1] for p, _ in demos]
    scores = [P.gold_score(d, r) for d, (_, r) in zip(digits, demos)]
    sorted_share = sum(r == "".join(sorted(d)) for d, (_, r) in zip(digits, demos)) / len(demos)
    copies = sum(r == d for d, (_, r) in zip(digits, demos)) / len(demos)
    assert 0.10 < sorted_share < 0.25  # 10% deliberately sorted + permutations / copies that happen to be sorted
    assert 0.40 < copies < 0.50
    assert 1.3 < sum(scores) / len(scores) < 1.7 and min(scores) < 1.0


@pytest.mark.parametrize("tau", [0.25, 0.5, 1.0])
def test_bt_label_frequencies_match_sigmoid(tau):
    digits, a, b = "7352", "2357", "7352"  # gold 2 vs 4/3
    expected = 1 / (1 + math.exp(-(2 - 4 / 3) / tau))
    rng, n = random.Random(1), 20_000
    wins = sum(P.label_pair(digits, a, b, rng, tau) == (a, b) for _ in range(n))
    assert abs(wins / n - expected) < 4 * math.sqrt(expected * (1 - expected) / n)
    # the order the pair is passed in does not matter
    wins_swapped = sum(P.label_pair(digits, b, a, rng, tau) == (a, b) for _ in range(n))
    assert abs(wins_swapped / n - expected) < 4 * math.sqrt(expected * (1 - expected) / n)


def test_bt_probability_limits():
    assert P.preference_probability(1.0, 0.0, 0.0) == 1.0
    assert P.preference_probability(0.0, 1.0, 0.0) == 0.0
    assert P.preference_probability(0.3, 0.3, 0.5) == 0.5
    assert P.preference_probability(-1e6, 1e6, 1e-3) == 0.0  # no overflow
    with pytest.raises(ValueError):
        P.preference_probability(0, 0, -1)


def test_accessors_name_missing_paths(tmp_path, monkeypatch):
    monkeypatch.setattr(P, "DATA_DIR", tmp_path / "nothing")
    for accessor in (P.policy_dir, P.reward_model_dir, lambda: P.pairs_path("train")):
        with pytest.raises(UserError, match="nothing"):
            accessor()
    with pytest.raises(ValueError):
        P.pairs_path("test")


def test_shipped_artifacts_fit_together(single_thread):
    """The package data: pairs on the right split, and the shipped RM orders held-out pairs like the gold scorer."""
    from fastrlhf.model.hf_io import load_model
    from fastrlhf.model.tokenizer import load_tokenizer
    from fastrlhf.tasks.examples import load_preference_pairs
    from fastrlhf.train.reward_model import reward_model_scores

    train, held_out = load_preference_pairs(P.pairs_path("train")), load_preference_pairs(P.pairs_path("eval"))
    assert len(train) > 5000 and len(held_out) > 500
    assert not any(P.is_held_out(p["digits"]) for p in train[:2000])
    assert all(P.is_held_out(p["digits"]) and p["prompt"] == p["digits"] + "=" for p in held_out)
    assert not load_model(P.policy_dir()).config.score_head
    model, tok = load_model(P.reward_model_dir()), load_tokenizer(P.reward_model_dir())
    pairs = [p for p in held_out[:400] if P.gold_score(p["digits"], p["chosen"]) != P.gold_score(p["digits"], p["rejected"])]
    prompts = [p["prompt"] for p in pairs]
    chosen = reward_model_scores(model, tok, prompts, [p["chosen"] for p in pairs])
    rejected = reward_model_scores(model, tok, prompts, [p["rejected"] for p in pairs])
    gold_says_chosen = [P.gold_score(p["digits"], p["chosen"]) > P.gold_score(p["digits"], p["rejected"]) for p in pairs]
    agree = sum(g == bool(c > r) for g, c, r in zip(gold_says_chosen, chosen, rejected)) / len(pairs)
    assert agree > 0.8, agree
