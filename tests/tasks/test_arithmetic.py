"""Built-in arithmetic task: deterministic splits, no train/eval overlap, parser and reward."""

import pytest

from fastrlhf.tasks import arithmetic as task


def operands(prompt):
    assert prompt.endswith("=")
    a, b = prompt[:-1].split("+")
    return int(a), int(b)


def test_rows_are_well_formed_and_correct():
    rows = task.train_rows(0, 200, seed=0) + task.eval_rows(100)
    for row in rows:
        a, b = operands(row["prompt"])
        assert row["prompt"] == f"{a}+{b}=" and row["answer"] == str(a + b)


def test_generation_is_deterministic_and_seeded():
    assert task.train_rows(0, 50, seed=3) == task.train_rows(0, 50, seed=3)
    assert task.train_rows(0, 50, seed=3) != task.train_rows(0, 50, seed=4)
    assert task.train_rows(20, 30, seed=3) == task.train_rows(0, 50, seed=3)[20:]  # resumable
    assert task.eval_rows(50) == task.eval_rows(80)[:50]
    assert task.sft_demonstrations(20, seed=1) == task.sft_demonstrations(20, seed=1)


def test_train_sft_and_eval_are_disjoint_for_any_seed():
    held_out = {row["prompt"] for row in task.eval_rows(300)}
    for seed in (0, 1, 2):
        train = {row["prompt"] for row in task.train_rows(0, 3000, seed)}
        sft = {prompt for prompt, _ in task.sft_demonstrations(1000, seed)}
        assert not held_out & train and not held_out & sft
        assert len(train) > 1000  # mostly distinct, so the check above means something


def test_small_operands_are_split_too():
    # 1-digit problems are few, so they recur often; the split must still hold for them
    held_out = {row["prompt"] for row in task.eval_rows(5, digits=[1])}
    train = {row["prompt"] for row in task.train_rows(0, 2000, seed=0, digits=[1])}
    assert held_out and not held_out & train
    assert len(train) >= 80  # nearly all of the 90-ish training problems appear


def test_held_out_fraction_is_about_ten_percent():
    problems = [task.Problem(a, b) for a in range(100) for b in range(100)]
    fraction = sum(map(task.is_held_out, problems)) / len(problems)
    assert 0.08 < fraction < 0.12


def test_eval_rows_are_distinct_and_too_many_is_an_error():
    rows = task.eval_rows(200)
    assert len({row["prompt"] for row in rows}) == 200
    with pytest.raises(ValueError, match="distinct held-out"):
        task.eval_rows(50, digits=[1])


def test_operand_sizes_follow_digits():
    for row in task.train_rows(0, 300, seed=0, digits=[2]):
        assert all(10 <= x <= 99 for x in operands(row["prompt"]))
    sizes = {len(str(x)) for row in task.train_rows(0, 300, 0) for x in operands(row["prompt"])}
    assert sizes == {1, 2, 3}
    with pytest.raises(ValueError):
        task.train_rows(0, 1, seed=0, digits=[0])


def test_sft_demonstrations_answer_their_prompt():
    for prompt, response in task.sft_demonstrations(100, seed=0):
        assert response == str(sum(operands(prompt)))


@pytest.mark.parametrize("completion, expected", [
    ("862", 862),
    (" 862", 862),
    ("862\n17+1=18", 862),
    ("862 junk", 862),
    ("862<eos>", 862),
    ("0", 0),
    ("007", 7),
    ("-12x", -12),
    ("8 62", 8),
    ("", None),
    ("   ", None),
    ("x862", None),
    ("=862", None),
    ("\n862", None),
    ("-", None),
    ("+5", None),
])
def test_parse_answer(completion, expected):
    assert task.parse_answer(completion) == expected


def test_reward_on_hand_examples():
    completions = ["579", "578", " 579\n", "five", "5790", "1004"]
    answers = ["579", "579", 579, "579", "579", "1004"]
    assert task.reward(completions, answer=answers, prompt=["x"] * 6) == [1, 0, 1, 0, 0, 1]
    assert task.accuracy(completions, answers) == pytest.approx(3 / 6)
    with pytest.raises(ValueError):
        task.reward(["1"], answer=["1", "2"])


def test_carry_free_sum_by_hand():
    from fastrlhf.tasks.arithmetic import carry_free_sum

    assert carry_free_sum(47, 815) == 852  # 7+5=12 → 2, 4+1=5, 0+8=8
    assert carry_free_sum(999, 1) == 990
    assert carry_free_sum(123, 456) == 579  # no carries: the true sum
    assert carry_free_sum(5, 5) == 0


def test_careless_demonstrations_share_and_determinism():
    from fastrlhf.tasks.arithmetic import carry_free_sum, sft_demonstrations

    clean = sft_demonstrations(2000, seed=1)
    noisy = sft_demonstrations(2000, seed=1, carry_drop=0.6)
    assert [p for p, _ in clean] == [p for p, _ in noisy]  # same problems
    carries = [(p, r) for (p, r) in clean if str(carry_free_sum(*map(int, p[:-1].split("+")))) != r]
    careless = [p for (p, r), (_, c) in zip(noisy, clean) if r != c]
    # only carry problems can differ, and about 60% of them do
    assert set(careless) <= {p for p, _ in carries}
    assert 0.55 < len(careless) / len(carries) < 0.65
    assert noisy == sft_demonstrations(2000, seed=1, carry_drop=0.6)
    with pytest.raises(ValueError):
        sft_demonstrations(3, seed=0, carry_drop=1.5)
