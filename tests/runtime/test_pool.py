"""The balanced rollout pool's decisions: length prediction, prompt assignment (LPT within Graham's
bound of the brute-force optimum), migration plans (conserve sequences, never raise the max load,
stop at a fixpoint, respect the cost model) and the reported idle / imbalance figures."""

import itertools
import json
import math
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastrlhf.runtime.pool import (worker_time, Item, LengthPredictor, MigrationCost, Move, SeqLoad, WorkerLoad, apply_moves,
                                   assign_balanced, assign_static, idle_seconds, imbalance, plan_migration,
                                   prompt_cost, worker_costs)


# ---------------------------------------------------------------------------- predictor
def test_ewma_matches_hand_worked_example():
    p = LengthPredictor(alpha=0.3, default=7.0)
    p.observe("a", 100)
    assert p.predict("a") == 100.0  # first observation is the value
    p.observe("a", 60)
    assert abs(p.predict("a") - 88.0) <= 1e-12  # 0.3*60 + 0.7*100
    p.observe("a", 20)
    assert abs(p.predict("a") - 67.6) <= 1e-12  # 0.3*20 + 0.7*88


def test_alpha_one_keeps_the_last_length():
    p = LengthPredictor(alpha=1.0, default=0.0)
    for x in (5, 9, 3):
        p.observe("k", x)
    assert p.predict("k") == 3.0


def test_unknown_prompt_falls_back_to_running_mean_then_default():
    p = LengthPredictor(default=42.0)
    assert p.predict("new") == 42.0
    p.observe("a", 10)
    p.observe("a", 30)
    p.observe("b", 50)
    assert abs(p.predict("new") - 30.0) <= 1e-12  # (10 + 30 + 50) / 3, every observation counts
    assert p.predict("a") == 20.0


def test_state_round_trips_through_json():
    p = LengthPredictor(alpha=0.4, default=1.0, max_prompts=10)
    for i, x in enumerate([3.5, 8, 1, 12.25, 7]):
        p.observe(f"p{i % 3}", x)
    q = LengthPredictor(alpha=0.4, default=1.0, max_prompts=10)
    q.load_state_dict(json.loads(json.dumps(p.state_dict())))
    assert q.state_dict() == p.state_dict()
    for key in ("p0", "p1", "p2", "unseen"):
        assert q.predict(key) == p.predict(key)
    assert [k for k, _ in q.state_dict()["prompts"]] == ["p2", "p0", "p1"]  # the LRU order, oldest first
    q.observe("p0", 4)
    assert [k for k, _ in q.state_dict()["prompts"]] == ["p2", "p1", "p0"]


def test_lru_bound_drops_the_least_recently_observed_prompt():
    p = LengthPredictor(default=0.0, max_prompts=2)
    p.observe("a", 10)
    p.observe("b", 20)
    p.observe("a", 10)  # a is now the most recent
    p.observe("c", 90)  # evicts b
    assert len(p) == 2
    assert [k for k, _ in p.state_dict()["prompts"]] == ["a", "c"]
    assert p.predict("b") == pytest.approx((10 + 20 + 10 + 90) / 4)  # back to the running mean


def test_load_state_trims_to_the_bound_keeping_the_newest():
    big = LengthPredictor(default=0.0, max_prompts=5)
    for i in range(5):
        big.observe(str(i), i)
    small = LengthPredictor(default=0.0, max_prompts=2)
    small.load_state_dict(big.state_dict())
    assert [k for k, _ in small.state_dict()["prompts"]] == ["3", "4"]


@pytest.mark.parametrize("alpha", [0.0, -0.1, 1.5, float("nan")])
def test_bad_alpha_raises(alpha):
    with pytest.raises(ValueError):
        LengthPredictor(alpha=alpha, default=1.0)


@pytest.mark.parametrize("length", [-1.0, float("inf"), float("nan")])
def test_bad_length_raises(length):
    with pytest.raises(ValueError):
        LengthPredictor(default=1.0).observe("a", length)


# ---------------------------------------------------------------------------- assignment
costs = st.lists(st.floats(min_value=0, max_value=1e4, allow_nan=False), max_size=40)


def _items(cs):
    return [Item(key=10 * i + 3, cost=c) for i, c in enumerate(cs)]


@given(costs, st.integers(1, 7), st.one_of(st.none(), st.integers(1, 12)))
def test_every_key_lands_exactly_once(cs, workers, capacity):
    items = _items(cs)
    keys = sorted(it.key for it in items)
    static = assign_static(items, workers)
    assert len(static) == workers and sorted(k for ks in static for k in ks) == keys
    assert max(map(len, static)) - min(map(len, static)) <= 1
    if capacity is not None and capacity * workers < len(items):
        with pytest.raises(ValueError):
            assign_balanced(items, workers, capacity)
        return
    balanced = assign_balanced(items, workers, capacity)
    assert len(balanced) == workers and sorted(k for ks in balanced for k in ks) == keys
    if capacity is not None:
        assert max(map(len, balanced)) <= capacity


def _optimal_makespan(cs, workers):
    best = math.inf
    for rest in itertools.product(range(workers), repeat=len(cs) - 1):  # item 0 on worker 0: symmetry
        load = [0.0] * workers
        for c, w in zip(cs, (0, *rest)):
            load[w] += c
        best = min(best, max(load))
    return best


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 1000), min_size=1, max_size=8), st.integers(2, 3))
def test_balanced_is_within_graham_bound_of_the_optimum(cs, workers):
    items = _items(cs)
    makespan = max(worker_costs(assign_balanced(items, workers), items))
    assert makespan <= (4 / 3 - 1 / (3 * workers)) * _optimal_makespan(cs, workers) + 1e-9


def test_long_tail_in_order_is_badly_split_by_static_and_evened_by_balanced():
    items = _items([90, 80, 70, 60, 10, 10, 10, 10])
    static = worker_costs(assign_static(items, 2), items)
    balanced = worker_costs(assign_balanced(items, 2), items)
    assert static == [300, 40] and imbalance(static) == pytest.approx(130 / 170)
    assert balanced == [170, 170] and imbalance(balanced) == 0.0


def test_balanced_ties_go_to_the_smaller_key_and_the_lower_worker():
    items = [Item(3, 1.0), Item(1, 1.0), Item(2, 1.0)]
    assert assign_balanced(items, 2) == [[1, 3], [2]]
    assert assign_static(items, 2) == [[3, 1], [2]]


def test_capacity_caps_items_per_worker():
    items = _items([100, 1, 1, 1])
    assert assign_balanced(items, 2) == [[3], [13, 23, 33]]
    assert assign_balanced(items, 2, capacity=2) == [[3, 33], [13, 23]]


def test_assignment_input_is_checked():
    with pytest.raises(ValueError):
        assign_balanced([Item(1, 1.0), Item(1, 2.0)], 2)
    with pytest.raises(ValueError):
        assign_static([Item(1, 1.0)], 0)
    with pytest.raises(ValueError):
        assign_balanced([Item(1, -1.0)], 1)
    assert assign_balanced([], 3) == [[], [], []]


def test_prompt_cost_counts_samples_and_optionally_the_prompt_once():
    assert prompt_cost(4, 100.0) == 400.0
    assert prompt_cost(4, 100.0, prompt_tokens=50, prefill_weight=0.1) == 405.0


# ---------------------------------------------------------------------------- migration
def _seq(sid, remaining, context=100):
    return SeqLoad(seq_id=sid, generated=context // 2, remaining=remaining, context=context)


def _worker(w, remainings, free=4, first_id=None):
    base = 100 * w if first_id is None else first_id
    return WorkerLoad(w, [_seq(base + i, r) for i, r in enumerate(remainings)], free)


@st.composite
def pools(draw):
    n = draw(st.integers(2, 5))
    out, sid = [], 0
    for w in range(n):
        rs = draw(st.lists(st.integers(1, 200) | st.floats(1, 200), max_size=6))
        out.append(WorkerLoad(7 + 3 * w, [_seq(sid + i, r, draw(st.integers(1, 4000))) for i, r in enumerate(rs)],
                              draw(st.integers(0, 3))))
        sid += len(rs)
    return out


def _check_plan(loads, moves):
    home = {s.seq_id: w.worker for w in loads for s in w.sequences}
    assert len({m.seq_id for m in moves}) == len(moves)  # never the same sequence twice
    for m in moves:
        assert m.src == home[m.seq_id] and m.dst != m.src and m.dst in {w.worker for w in loads}
    after = apply_moves(loads, moves)
    ids = Counter(s.seq_id for w in loads for s in w.sequences)
    assert Counter(s.seq_id for w in after for s in w.sequences) == ids  # none lost, none duplicated
    before_max = max(w.load for w in loads)
    assert max(w.load for w in after) <= before_max
    return after


@settings(max_examples=300, deadline=None)
@given(pools(), st.sampled_from([0.0, 0.1, 0.5]))
def test_plan_conserves_sequences_never_raises_the_max_and_stops(loads, threshold):
    moves = plan_migration(loads, threshold)
    after = _check_plan(loads, moves)
    assert all(m.mode == "reprefill" for m in moves)
    assert plan_migration(after, threshold) == []  # a fixpoint: no improving move is left


@settings(max_examples=150, deadline=None)
@given(pools(), st.sampled_from([0.0, 0.2]), st.floats(1e-6, 1e-3), st.floats(1e-5, 1e-2))
def test_plan_with_a_cost_model_keeps_the_same_invariants(loads, threshold, prefill_s, decode_s):
    cost = MigrationCost(kv_bytes_per_token=1e5, bandwidth_bytes_per_s=1e9, prefill_s_per_token=prefill_s)
    moves = plan_migration(loads, threshold, cost, decode_s)
    _check_plan(loads, moves)
    by_id = {s.seq_id: s for w in loads for s in w.sequences}
    assert all(m.mode == cost.mode(by_id[m.seq_id]) for m in moves)


def test_no_moves_when_balanced_within_threshold():
    loads = [_worker(0, [92, 8]), _worker(1, [95]), _worker(2, [45, 45])]  # max 100 <= 1.1 x mean 95
    assert plan_migration(loads, threshold=0.1) == []
    assert plan_migration(loads, threshold=0.0) == [Move(1, 0, 2, "reprefill")]  # 90 + 8 < 100


def test_a_lone_sequence_is_never_moved():
    assert plan_migration([_worker(0, [1000]), _worker(1, []), _worker(2, [])], threshold=0.0) == []


def test_hand_plan_halves_the_gap_and_stops_at_a_lone_peak():
    loads = [_worker(0, [50, 30, 20]), _worker(1, []), _worker(2, [10])]
    # to the empty worker: 50 gives max(50, 50), the best pair max; then workers 0 and 1 tie at
    # 50 and worker 1's lone sequence bounds the makespan, so the plan stops.
    assert plan_migration(loads, threshold=0.2) == [Move(0, 0, 1, "reprefill")]


def test_destinations_with_free_slots_are_preferred():
    loads = [_worker(0, [60, 40]), _worker(1, [], free=0), _worker(2, [10], free=2)]
    assert plan_migration(loads, threshold=0.0) == [Move(1, 0, 2, "reprefill")]
    loads[2] = _worker(2, [10], free=0)  # no slots anywhere: the least loaded, the larger of equal gains
    assert plan_migration(loads, threshold=0.0) == [Move(0, 0, 1, "reprefill")]


def test_cost_model_picks_the_cheaper_mode_in_both_regimes():
    seq = _seq(1, 10, context=1000)
    slow_link = MigrationCost(kv_bytes_per_token=1e5, bandwidth_bytes_per_s=1e9, prefill_s_per_token=1e-5)
    assert slow_link.kv_seconds(seq) == pytest.approx(0.1) and slow_link.reprefill_seconds(seq) == pytest.approx(0.01)
    assert slow_link.mode(seq) == "reprefill" and slow_link.seconds(seq) == pytest.approx(0.01)
    fast_link = MigrationCost(kv_bytes_per_token=1e5, bandwidth_bytes_per_s=1e11, prefill_s_per_token=1e-5,
                              fixed_s=0.5)
    assert fast_link.mode(seq) == "kv" and fast_link.seconds(seq) == pytest.approx(0.5 + 0.001)


def test_a_move_costing_more_than_it_saves_is_skipped():
    loads = [WorkerLoad(0, [_seq(1, 40, 1000), _seq(2, 40, 1000)], 4), WorkerLoad(1, [], 4)]
    # moving 40 tokens turns max 80 into 40: saves 40 x 0.01 s = 0.4 s
    dear = MigrationCost(kv_bytes_per_token=1e6, bandwidth_bytes_per_s=1e9, prefill_s_per_token=1e-3)  # 1 s
    cheap = MigrationCost(kv_bytes_per_token=1e6, bandwidth_bytes_per_s=1e9, prefill_s_per_token=1e-4)  # 0.1 s
    assert plan_migration(loads, 0.0, dear, decode_s_per_token=0.01) == []
    assert plan_migration(loads, 0.0, cheap, decode_s_per_token=0.01) == [Move(1, 0, 1, "reprefill")]
    assert plan_migration(loads, 0.0, dear) == [Move(1, 0, 1, "kv")]  # no decode speed: mode only


def test_migration_input_is_checked():
    with pytest.raises(ValueError):
        plan_migration([_worker(0, [5], first_id=1), _worker(1, [5], first_id=1)], 0.0)
    with pytest.raises(ValueError):
        plan_migration([_worker(0, [0.5, 3]), _worker(1, [])], 0.0)
    with pytest.raises(ValueError):
        plan_migration([_worker(0, [5, 3]), _worker(1, [])], -0.1)
    with pytest.raises(ValueError):
        MigrationCost(kv_bytes_per_token=1.0, bandwidth_bytes_per_s=0.0, prefill_s_per_token=1.0)
    assert plan_migration([_worker(0, [5, 3])], 0.0) == []  # one worker: nowhere to go


# ---------------------------------------------------------------------------- idle / imbalance
def test_idle_seconds_per_worker():
    assert idle_seconds([3.0, 5.0, 7.5], 7.5) == [4.5, 2.5, 0.0]
    assert idle_seconds([8.0], 7.5) == [0.0]  # never negative


def test_imbalance():
    assert imbalance([2, 4, 6]) == pytest.approx(0.5)
    assert imbalance([9, 0, 0]) == pytest.approx(2.0)
    assert imbalance([5, 5]) == 0.0
    assert imbalance([]) == 0.0
    assert imbalance([0, 0]) == 0.0


# ---------------------------------------------------------------------------- the step-cost time model
def _times(loads, step_tokens):
    return [worker_time([s.remaining for s in w.sequences], step_tokens) for w in loads]


@settings(max_examples=200, deadline=None)
@given(pools(), st.sampled_from([0.0, 0.2]), st.sampled_from([1.0, 16.0, 200.0]))
def test_plan_under_the_step_cost_model_conserves_and_never_raises_the_finish_time(loads, threshold, step_tokens):
    moves = plan_migration(loads, threshold, step_tokens=step_tokens)
    home = {s.seq_id: w.worker for w in loads for s in w.sequences}
    assert len({m.seq_id for m in moves}) == len(moves) and all(m.src == home[m.seq_id] != m.dst for m in moves)
    after = apply_moves(loads, moves)
    assert Counter(s.seq_id for w in after for s in w.sequences) == Counter(s.seq_id for w in loads for s in w.sequences)
    assert max(_times(after, step_tokens)) <= max(_times(loads, step_tokens)) + 1e-9
    assert plan_migration(after, threshold, step_tokens=step_tokens) == []


def test_worker_time_is_steps_plus_tokens():
    assert worker_time([30.0, 10.0, 5.0], step_tokens=4.0) == 45.0 + 4.0 * 30.0
    assert worker_time([], step_tokens=4.0) == 0.0


def test_with_a_step_cost_the_worker_holding_the_longest_sample_gets_less_of_the_rest():
    # one sample each, lengths 100, 50, 50, 10. Token LPT: 100 | 50 + 50, then 10 to the tie's lower
    # worker: tokens 110 | 100, but finish times (step cost 1 token) 110 + 100 = 210 | 100 + 50 = 150.
    # The step-cost model gives the 10 to the other worker: 200 | 160.
    items = [Item(0, 100.0, 100.0), Item(1, 50.0, 50.0), Item(2, 50.0, 50.0), Item(3, 10.0, 10.0)]
    assert assign_balanced(items, 2) == [[0, 3], [1, 2]]
    assert assign_balanced(items, 2, step_tokens=1.0) == [[0], [1, 2, 3]]
