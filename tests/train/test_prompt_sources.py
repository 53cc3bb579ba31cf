"""task.train_size: a built-in task's stream cut to a finite dataset, read in seeded epochs."""

import pytest

from fastrlhf.config import load_config
from fastrlhf.errors import UserError
from fastrlhf.tasks import arithmetic
from fastrlhf.train.data import prompt_source


def test_train_size_cycles_the_first_rows_in_seeded_epochs():
    config = load_config(None, ["task.train_size=5", "task.eval_size=10"])
    source = prompt_source(config.task, seed=3)
    pool = arithmetic.train_rows(0, 5, seed=3)
    first, second = source.rows_at(0, 5), source.rows_at(5, 5)
    key = lambda rows: sorted(r["prompt"] for r in rows)  # noqa: E731
    assert key(first) == key(second) == key(pool)  # each epoch is the same five prompts
    orders = {tuple(r["prompt"] for r in source.rows_at(5 * epoch, 5)) for epoch in range(6)}
    assert len(orders) > 1  # each epoch in its own seeded order
    assert source.rows_at(3, 4) == (first + second)[3:7]  # positions continue across epochs (resume)
    assert source.eval_rows == arithmetic.eval_rows(10)  # held-out evaluation is unchanged
    assert prompt_source(load_config(None, []).task, seed=3).rows_at(5, 5) == arithmetic.train_rows(5, 5, seed=3)


def test_train_size_must_be_positive():
    with pytest.raises(UserError, match="train_size"):
        load_config(None, ["task.train_size=0"])
