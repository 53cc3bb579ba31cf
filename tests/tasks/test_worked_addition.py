"""Built-in worked_addition task: hand-worked traces, careless traces, parser, reward, splits, sizes."""

from collections import Counter

import pytest

from fastrlhf.tasks import BUILTIN_TASKS, arithmetic, task_max_new_tokens
from fastrlhf.tasks import worked_addition as task


def operands(prompt):
    assert prompt.endswith("=")
    a, b = prompt[:-1].split("+")
    return int(a), int(b)


@pytest.mark.parametrize("a, b, expected", [
    (47, 815, "7+5+0=12 4+1+1=6 0+8+0=8\n862"),  # carry, unequal lengths (the docstring's example)
    (5, 7, "5+7+0=12\n12"),  # a final carry shows only in the answer
    (0, 0, "0+0+0=0\n0"),
    (123, 456, "3+6+0=9 2+5+0=7 1+4+0=5\n579"),  # no carries
    (999, 1, "9+1+0=10 9+0+1=10 9+0+1=10\n1000"),  # a carry chain into a new digit
    (3, 4096, "3+6+0=9 0+9+0=9 0+0+0=0 0+4+0=4\n4099"),  # the shorter operand first
    (95, 5, "5+5+0=10 9+0+1=10\n100"),
    (99999999, 99999999, " ".join(["9+9+0=18"] + ["9+9+1=19"] * 7) + "\n199999998"),
])
def test_hand_worked_traces(a, b, expected):
    assert task.working(a, b) == expected
    assert task.parse_answer(expected) == a + b and task.is_well_formed(expected)


@pytest.mark.parametrize("a, b, expected", [
    (47, 815, "7+5+0=12 4+1+0=5 0+8+0=8\n852"),
    (5, 7, "5+7+0=12\n2"),
    (999, 1, "9+1+0=10 9+0+0=9 9+0+0=9\n990"),
    (123, 456, "3+6+0=9 2+5+0=7 1+4+0=5\n579"),  # no carries: careless = correct
])
def test_careless_traces_drop_every_carry(a, b, expected):
    assert task.careless_working(a, b) == expected
    assert task.parse_answer(expected) == arithmetic.carry_free_sum(a, b)
    assert task.is_well_formed(expected)


def test_traces_have_one_column_per_digit_of_the_longer_operand():
    for row in task.train_rows(0, 300, seed=0):
        a, b = operands(row["prompt"])
        columns = task.working(a, b).split("\n")[0].split(" ")
        assert len(columns) == max(len(str(a)), len(str(b)))


@pytest.mark.parametrize("completion, expected", [
    ("7+5+0=12\n12", 12),
    ("\n862", 862),
    ("x\n862 junk", 862),
    ("a\n862\n5", 862),
    ("a\n-3", -3),
    ("a\n007", 7),
    ("a\n862<eos>", 862),
    ("862", None),  # no newline
    ("", None),
    ("a\n 862", None),  # not immediately after the newline
    ("a\n\n862", None),  # the first newline decides
    ("a\nx862", None),
    ("a\n-", None),
    ("a\n", None),
])
def test_parse_answer(completion, expected):
    assert task.parse_answer(completion) == expected


def test_reward_checks_only_the_answer():
    completions = [task.working(47, 815), task.careless_working(47, 815), "garbage\n862", "862", "\n861"]
    assert task.reward(completions, answer=["862"] * 4 + [862], prompt=["47+815="] * 5) == [1.0, 0.0, 1.0, 0.0, 0.0]
    assert task.accuracy([], []) == 0.0
    with pytest.raises(ValueError):
        task.reward(["\n1"], answer=[1, 2])


def test_is_well_formed_checks_the_format_only():
    assert task.is_well_formed("7+5+0=13\n5")  # wrong arithmetic, right format
    for bad in ("7+5+0=12", "7+5+2=14\n1", "7+5+0=12  4+1+1=6\n1", "7+5+0=12\n862 ", "\n1", "75+0=12\n1",
                "7+5+0=12 \n1", "7+5+0=12\n"):
        assert not task.is_well_formed(bad), bad


def test_rows_and_demonstrations_are_correct():
    for row in task.train_rows(0, 200, seed=0) + task.eval_rows(100):
        a, b = operands(row["prompt"])
        assert row == {"prompt": f"{a}+{b}=", "answer": str(a + b)}
    for prompt, response in task.sft_demonstrations(200, seed=0):
        assert response == task.working(*operands(prompt))


def test_careless_share_follows_carry_drop():
    pairs = task.sft_demonstrations(2000, seed=0, carry_drop=0.6)
    careless = [r == task.careless_working(*operands(p)) != task.working(*operands(p)) for p, r in pairs]
    correct = [r == task.working(*operands(p)) for p, r in pairs]
    assert all(x or y for x, y in zip(careless, correct))
    with_carry = [c for c, (p, _) in zip(careless, pairs)
                  if arithmetic.carry_free_sum(*operands(p)) != sum(operands(p))]
    assert 0.55 < sum(with_carry) / len(with_carry) < 0.65
    assert task.sft_demonstrations(50, 0, carry_drop=1.0)[:5] == [(p, task.careless_working(*operands(p)))
                                                                    for p, _ in task.sft_demonstrations(5, 0)]
    with pytest.raises(ValueError):
        task.sft_demonstrations(1, 0, carry_drop=1.5)


def test_generation_is_deterministic_seeded_and_resumable():
    assert task.train_rows(0, 50, seed=3) == task.train_rows(0, 50, seed=3)
    assert task.train_rows(0, 50, seed=3) != task.train_rows(0, 50, seed=4)
    assert task.train_rows(20, 30, seed=3) == task.train_rows(0, 50, seed=3)[20:]
    assert task.eval_rows(50) == task.eval_rows(80)[:50]
    assert task.train_rows(0, 50, seed=0) != arithmetic.train_rows(0, 50, seed=0)


def test_train_sft_and_eval_are_disjoint_for_any_seed():
    held_out = {row["prompt"] for row in task.eval_rows(300)}
    assert all(task.is_held_out(task.Problem(*operands(p))) for p in held_out)
    for seed in (0, 1, 2):
        train = {row["prompt"] for row in task.train_rows(0, 3000, seed)}
        sft = {prompt for prompt, _ in task.sft_demonstrations(1000, seed)}
        assert not held_out & train and not held_out & sft
        assert len(train) > 1000
    small_held_out = {row["prompt"] for row in task.eval_rows(5, digits=[1])}
    assert not small_held_out & {row["prompt"] for row in task.train_rows(0, 2000, seed=0, digits=[1])}


def test_split_has_its_own_salt():
    problems = [task.Problem(a, b) for a in range(100) for b in range(100)]
    ours = [task.is_held_out(p) for p in problems]
    assert 0.08 < sum(ours) / len(ours) < 0.12
    assert ours != [arithmetic.is_held_out(p) for p in problems]


def test_digit_counts_are_long_tailed():
    sizes = Counter(len(str(x)) for row in task.train_rows(0, 4000, seed=0) for x in operands(row["prompt"]))
    total = sum(sizes.values())
    weight_sum = sum(task.DIGIT_WEIGHTS.values())
    assert set(sizes) == set(range(1, 9))
    for d, weight in task.DIGIT_WEIGHTS.items():  # 8000 draws: ±3.5 sigma of a binomial share
        p = weight / weight_sum
        assert abs(sizes[d] / total - p) < 3.5 * (p * (1 - p) / total) ** 0.5 + 0.002, (d, sizes)
    assert sizes[1] > 5 * sizes[8]


def test_user_digits_are_drawn_uniformly():
    sizes = Counter(len(str(x)) for row in task.train_rows(0, 600, seed=0, digits=[2, 5]) for x in operands(row["prompt"]))
    assert set(sizes) == {2, 5} and abs(sizes[2] - sizes[5]) < 150


def test_eval_rows_are_distinct_and_bad_digits_are_errors():
    assert len({row["prompt"] for row in task.eval_rows(200)}) == 200
    with pytest.raises(ValueError, match="distinct held-out"):
        task.eval_rows(50, digits=[1])
    for bad in ([0], [], [19], [1.5]):
        with pytest.raises(ValueError):
            task.train_rows(0, 1, seed=0, digits=bad)
        with pytest.raises(ValueError):
            task.eval_rows(1, digits=bad)


def test_responses_fit_the_default_max_new_tokens():
    longest = task.working(99999999, 99999999)
    assert len(longest) + 1 <= task.DEFAULT_MAX_NEW_TOKENS == task_max_new_tokens("worked_addition")  # +1: EOS
    assert "worked_addition" in BUILTIN_TASKS and task_max_new_tokens("arithmetic") == 8


def test_max_new_tokens_defaults_to_the_tasks():
    from fastrlhf.config import Config, config_from_dict, describe, load_config

    worked = load_config(None, ["task.name=worked_addition"])
    assert worked.rollout.max_new_tokens == 96 and worked.task.digits is None
    assert config_from_dict(worked.to_dict()) == worked  # the snapshot holds the value in effect
    assert load_config(None, ["task.name=worked_addition", "rollout.max_new_tokens=20"]).rollout.max_new_tokens == 20
    assert load_config(None, ["rollout.max_new_tokens=20", "task.name=worked_addition"]).rollout.max_new_tokens == 20
    assert load_config().rollout.max_new_tokens == Config().rollout.max_new_tokens == 8
    assert load_config(None, ["task.name=preference"]).rollout.max_new_tokens == 8
    assert dict((key, default) for key, default, _ in describe())["rollout.max_new_tokens"] is None  # --help
