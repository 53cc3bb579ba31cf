"""Rollouts made ahead: the version schedule, the bounded queue, the generator thread under random
timings (the staleness bound is never exceeded), and queued rollouts through a checkpoint."""

import random
import threading
import time

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fastrlhf.dataflow.batch import Batch
from fastrlhf.rollout.sampler import SamplingParams
from fastrlhf.rollout.sequence import Sequence
from fastrlhf.runtime.async_rollouts import AsyncRollouts
from fastrlhf.runtime.rollout_pool import RolloutPool
from fastrlhf.train.rollout_queue import (InlineRollouts, Rollout, RolloutQueue, RolloutSchedule, StalenessError,
                                          load_rollouts, save_rollouts, staleness_stats)


# ---------------------------------------------------------------------------------------------- schedule
def test_schedule_versions():
    assert [RolloutSchedule().weights_step(j) for j in range(4)] == [0, 1, 2, 3]
    assert [RolloutSchedule(off_policy_steps=3).weights_step(j) for j in range(7)] == [0, 0, 0, 3, 3, 3, 6]
    assert [RolloutSchedule(max_staleness=2).weights_step(j) for j in range(6)] == [0, 0, 0, 1, 2, 3]
    assert RolloutSchedule(max_staleness=2).bound == 2 and RolloutSchedule(off_policy_steps=4).bound == 3
    with pytest.raises(ValueError):
        RolloutSchedule(max_staleness=1, off_policy_steps=2)


@given(k=st.integers(0, 4), n=st.integers(1, 5), step=st.integers(0, 40), total=st.integers(1, 50))
def test_ahead_of_is_exactly_the_steps_made_from_older_weights(k, n, step, total):
    if k and n > 1:
        return
    s = RolloutSchedule(k, n)
    ahead = s.ahead_of(step, total)
    assert ahead == [j for j in range(step, total) if s.weights_step(j) < step]
    assert len(ahead) <= s.bound
    assert all(j - s.weights_step(j) <= s.bound for j in range(total))


def test_staleness_stats_histogram_and_guard():
    stats = staleness_stats([0, 1, 1, 2], bound=2, step=4)
    assert stats["staleness/0"] == 0.25 and stats["staleness/1"] == 0.5 and stats["staleness/2"] == 0.25
    assert stats["staleness_mean"] == 1.0 and stats["staleness_max"] == 2.0
    with pytest.raises(StalenessError, match="step 5"):
        staleness_stats([3], bound=2, step=4)
    with pytest.raises(StalenessError):
        staleness_stats([-1], bound=2, step=4)  # a version the trainer has not made


def test_queue_is_ordered_and_bounded():
    q = RolloutQueue(capacity=2)
    q.put(_rollout(3))
    with pytest.raises(RuntimeError):
        q.put(_rollout(5))
    q.put(_rollout(4))
    with pytest.raises(RuntimeError, match="full"):
        q.put(_rollout(5))
    with pytest.raises(RuntimeError):
        q.take(4)
    assert q.take(3).step == 3 and q.steps() == [4]


# ---------------------------------------------------------------------------------------------- checkpoint files
def test_rollouts_round_trip_through_files(tmp_path):
    rollouts = [_rollout(7, version=5), _rollout(8, version=6)]
    save_rollouts(rollouts, tmp_path / "rollouts")
    loaded = load_rollouts(tmp_path / "rollouts")
    assert [r.step for r in loaded] == [7, 8]
    for a, b in zip(rollouts, loaded):
        assert (a.version, a.position, a.stats, a.seconds) == (b.version, b.position, b.stats, b.seconds)
        for part in ("data", "outputs"):
            x, y = getattr(a, part), getattr(b, part)
            assert set(x.keys()) == set(y.keys()) and len(x) == len(y)
            for key in x.keys():
                if isinstance(x[key], torch.Tensor):
                    assert torch.equal(x[key], y[key]) and x[key].dtype == y[key].dtype
                else:
                    assert x[key] == y[key]
    assert load_rollouts(tmp_path / "missing") == []


def test_malformed_queued_rollout_is_one_line_error(tmp_path):
    save_rollouts([_rollout(1)], tmp_path)
    (tmp_path / "step_000002.json").write_text("{", encoding="utf-8")
    with pytest.raises(Exception, match="malformed queued rollout"):
        load_rollouts(tmp_path)


# ---------------------------------------------------------------------------------------------- N off-policy steps
def test_inline_rollouts_generate_a_block_with_one_version():
    made = []
    version = [0]

    def generate(step, position):
        made.append((step, version[0], position))
        return _rollout(step, version=version[0], position=position)

    inline = InlineRollouts(RolloutSchedule(off_policy_steps=3), total_steps=7, generate=generate, first_position=0)
    for step in range(7):
        rollout, _ = inline.next(step, version[0])
        assert version[0] - rollout.version <= 2
        inline.consumed(step)
        version[0] += 1
    assert made == [(0, 0, 0), (1, 0, 2), (2, 0, 4), (3, 3, 6), (4, 3, 8), (5, 3, 10), (6, 6, 12)]


# ---------------------------------------------------------------------------------------------- the generator thread
class FakeTokenizer:
    pad_token_id = 0

    def encode_prompt(self, text):
        return [1 + len(text) % 5]

    def decode(self, ids):
        return " ".join(map(str, ids))


class FakeStats:
    def metrics(self):
        return {}


class FakePool:
    """A rollout pool whose generate takes a random time and tags samples with the loaded version;
    it records every version it was synced to and the version it generated each call with."""

    generate_batch = RolloutPool.generate_batch  # the real texts → batch path over the fake engines

    def __init__(self, rng: random.Random, max_seconds: float):
        self.rng, self.max_seconds = rng, max_seconds
        self.loaded = None
        self.last = FakeStats()
        self.calls = []
        self.lock = threading.Lock()

    def sync(self, version, publish):
        published = publish()
        assert published[0] == version
        self.loaded = version
        return {}

    def generate(self, prompt_ids, texts, params, version, on_groups=None):
        assert version == self.loaded, "generated with weights it was not synced to"
        time.sleep(self.rng.uniform(0, self.max_seconds))
        with self.lock:
            self.calls.append(version)
        seqs = []
        for k, p in enumerate(prompt_ids):
            for j in range(params.n):
                s = Sequence(k * params.n + j, list(p), k, j, 0, policy_version=version)
                s.token_ids, s.logprobs, s.finish_reason = [2, 3], torch.zeros(2), "stop"
                seqs.append(s)
        return seqs


@settings(max_examples=12, deadline=None)
@given(k=st.integers(1, 3), seed=st.integers(0, 10_000), skip_every=st.integers(0, 3))
def test_async_generator_never_exceeds_the_staleness_bound(k, seed, skip_every):
    """Random generate and train times: every rollout step j comes from step j − K's weights, is at
    most K versions old when trained on, and the queue never holds more than K + 1 rollouts."""
    rng = random.Random(seed)
    pool = FakePool(random.Random(seed + 1), max_seconds=0.004)
    version = [0]
    published = []
    total = 9

    def publish():
        published.append(version[0])
        return version[0], [], 0, 0.0

    schedule = RolloutSchedule(max_staleness=k)
    gen = AsyncRollouts(schedule, total, pool, publish, make_data=lambda pos: Batch({"prompts": [f"p{pos}", "q"]}),
                        tokenizer=FakeTokenizer(), params=SamplingParams(n=2), seed_of=lambda j: j,
                        first_step=0, first_position=0)
    longest = 0
    versions_at_step = []
    try:
        for step in range(total):
            rollout, _ = gen.next(step, version[0])
            longest = max(longest, len(gen.queue))
            lags = [version[0] - v for v in rollout.outputs["policy_version"].tolist()]
            assert max(lags) <= k and min(lags) >= 0
            versions_at_step.append(version[0])
            assert rollout.version == versions_at_step[schedule.weights_step(step)]
            time.sleep(rng.uniform(0, 0.004))  # training
            if not (skip_every and step % skip_every == 0):  # a skipped (non-finite) step makes no version
                version[0] += 1
            gen.consumed(step)
    finally:
        gen.close()
    assert longest <= k + 1
    # one snapshot per step whose weights some rollout needs, taken at that step's start
    assert len(published) == len({schedule.weights_step(j) for j in range(total)})


def test_async_generator_failure_reaches_the_trainer():
    class Broken(FakePool):
        def generate(self, *args):
            raise RuntimeError("the pool lost every worker")

    gen = AsyncRollouts(RolloutSchedule(max_staleness=1), 3, Broken(random.Random(0), 0.0), lambda: (0, [], 0, 0.0),
                        make_data=lambda pos: Batch({"prompts": ["p"]}), tokenizer=FakeTokenizer(),
                        params=SamplingParams(n=1), seed_of=lambda j: j, first_step=0, first_position=0)
    with pytest.raises(RuntimeError, match="lost every worker"):
        gen.next(0, 0)
    gen.close()


def test_async_generator_checkpoint_drain_and_restore():
    """`saved(s)` returns exactly the rollouts made from weights older than step s; a generator
    restored from them continues with the same versions as the uninterrupted one."""
    def run(stop_at=None, restored=None, first=0):
        pool = FakePool(random.Random(3), max_seconds=0.002)
        version = [first]
        gen = AsyncRollouts(RolloutSchedule(max_staleness=2), 6, pool, lambda: (version[0], [], 0, 0.0),
                            make_data=lambda pos: Batch({"prompts": [f"p{pos}"]}), tokenizer=FakeTokenizer(),
                            params=SamplingParams(n=1), seed_of=lambda j: j, first_step=first,
                            first_position=first)
        gen.restore(restored or [])
        seen, saved = [], None
        try:
            for step in range(first, 6):
                rollout, _ = gen.next(step, version[0])
                seen.append((step, rollout.version, rollout.position, rollout.data["prompts"]))
                version[0] += 1
                gen.consumed(step)
                if stop_at == step + 1:
                    saved = gen.saved(step + 1)
                    break
        finally:
            gen.close()
        return seen, saved

    whole, _ = run()
    head, saved = run(stop_at=3)
    assert [r.step for r in saved] == [3, 4]  # made from the weights of steps 1 and 2
    tail, _ = run(restored=saved, first=3)
    assert head + tail == whole


def _rollout(step: int, version: int = 0, position: int = 0) -> Rollout:
    data = Batch({"prompts": ["a", "b"], "answer": ["1", "2"]})
    outputs = Batch({"prompt_index": torch.tensor([0, 0, 1, 1]), "sequences": torch.arange(12).reshape(4, 3),
                     "logprobs": torch.randn(4, 3), "completions": ["x", "y", "z", "w"],
                     "policy_version": torch.full((4,), version, dtype=torch.int64)})
    return Rollout(step, version, position, data, outputs, {"response_length": 2.5}, 0.125)
