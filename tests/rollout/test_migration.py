"""Sample migration between engines (`take` / `add` / `load`, `start(keys=, reserve=)`): a sequence
taken out of one engine mid-generation and added to another with the same weights continues with
the same tokens it would have sampled without moving (counter-based randomness), with log-probs
equal up to fp32 reduction order (re-prefill feeds its tokens in one causal pass, not one decode
step each). Checked for several migration steps, right after admission (one token), migrating
back, workers that start empty, n-gram speculators and the static (compile-mode) decode."""

import pytest
import torch
from helpers import tiny_model_dir

from fastrlhf.errors import UserError
from fastrlhf.model.hf_io import load_model
from fastrlhf.rollout.engine import RolloutEngine, sequence_seed
from fastrlhf.rollout.sampler import SamplingParams
from fastrlhf.rollout.speculative.ngram import NGramDrafter
from fastrlhf.rollout.speculative.verify import Speculator

# the last prompt is longer than SHORT_QUERY (16): its prefill and re-prefill take the SDPA path
PROMPTS = [[1, 2, 3], [4, 5], [6, 7, 8, 9, 1, 2, 3], [3] * 9, [9], [5, 6, 7, 8], list(range(1, 10)) * 2 + [2]]
PARAMS = SamplingParams(temperature=1.0, max_new_tokens=24, n=4, seed=3, stop_token_ids=(10,))
A_KEYS, B_KEYS = [0, 1, 2, 3, 6], [4, 5]  # engine A's and engine B's prompts (keys = indices in PROMPTS)
POSITIONS = max(len(p) for p in PROMPTS) + PARAMS.max_new_tokens  # a cache any of these sequences fits
# migrated vs unmigrated log-probs: measured max |Δ| 4.8e-7 over every scenario below (fp32, CPU);
# sequences that never moved differ by as much from batch composition alone (other key spans)
TOL = 2e-6


@pytest.fixture(scope="module")
def model(tmp_path_factory, single_thread):
    return load_model(tiny_model_dir(tmp_path_factory.mktemp("m"), "llama", vocab_size=11))


@pytest.fixture(scope="module")
def reference(model):
    """The unmigrated run: every prompt in one plain generate call, by seq_id."""
    out = RolloutEngine(model, num_slots=8).generate(PROMPTS, PARAMS)
    assert len({len(s.token_ids) for s in out}) > 5 and max(len(s.token_ids) for s in out) == PARAMS.max_new_tokens
    return {s.seq_id: s for s in out}


class Recording(RolloutEngine):
    """Records every admitted batch as [(seq_id, tokens carried in, distinct fed rows)]."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.admissions = []

    def _prefill(self, seqs):
        rows = len({tuple(s.prefill_ids) for s in seqs})
        self.admissions.append([(s.seq_id, len(s.token_ids), rows) for s in seqs])
        super()._prefill(seqs)


def ngram():
    return Speculator(NGramDrafter(n_max=3), gamma=3)


def engine(model, speculator=None, static=False, slots=6):
    """Static: compile mode's all-slots decode step, run eagerly (no cold compile)."""
    return Recording(model, num_slots=slots, speculator=speculator, compile=static, compiler=(lambda fn: fn) if static else None)


def started(model, keys, reserve=None, **kwargs):
    e = engine(model, **kwargs)
    e.start([PROMPTS[k] for k in keys], PARAMS, keys=keys, reserve=reserve)
    return e


def move(src, dst, moved, ref, **take):
    """take(**take) from src, check what a taken sequence carries, add it to dst; appends
    (sequence, tokens it carried) to `moved`."""
    taken = src.take(**take)
    for s in taken:
        r = ref[s.seq_id]
        assert s.slot is None and s.finish_reason is None and not s.finished
        assert (s.prompt_index, s.sample_index, s.prompt_ids) == (r.prompt_index, r.sample_index, r.prompt_ids)
        assert s.seed == r.seed and s.token_ids == r.token_ids[: len(s.token_ids)]  # its outputs so far
        if s.token_ids:
            assert s.logprobs.dtype == torch.float32 and s.logprobs.device.type == "cpu"
            assert len(s.logprobs) == len(s.token_ids) and (s.logprobs - r.logprobs[: len(s.token_ids)]).abs().max() <= TOL
    dst.add(taken)
    moved.extend((s, len(s.token_ids)) for s in taken)
    return taken


def mix(e, running=3, waiting=2):
    """Ids of running sequences (the longest and the shortest so far first) and of waiting ones."""
    load = {s["seq_id"]: s for s in e.load()["sequences"]}
    run = sorted((s for s in load.values() if s["running"]), key=lambda s: -s["generated"])
    picked = run[:1] + run[-1:] + run[1:-1]
    return [s["seq_id"] for s in picked[:running]] + [s["seq_id"] for s in load.values() if not s["running"]][:waiting]


def drive(engines, plan, limit=400):
    """Step every engine in lockstep; before step t run plan[t](engines). → all finished sequences."""
    for t in range(limit):
        if t in plan:
            plan[t](*engines)
        if all(e.scheduler.done for e in engines) and not any(u > t for u in plan):
            return [s for e in engines for s in e.finished]
        for e in engines:
            if not e.scheduler.done:
                e.step()
    raise AssertionError("engines did not finish")


def check_lossless(out, ref, keys=A_KEYS + B_KEYS) -> float:
    """Each sequence of the unmigrated run of the prompts `keys` exactly once, same tokens and
    finish; → max |Δ log-prob|."""
    ref = {i: s for i, s in ref.items() if s.prompt_index in keys}
    assert sorted(s.seq_id for s in out) == sorted(ref)  # none lost, none duplicated
    worst = 0.0
    for s in out:
        r = ref[s.seq_id]
        assert (s.prompt_index, s.sample_index, s.seed) == (r.prompt_index, r.sample_index, r.seed)
        assert s.token_ids == r.token_ids and s.finish_reason == r.finish_reason, s.seq_id
        worst = max(worst, (s.logprobs - r.logprobs).abs().max().item())
    print(f"max |migrated − unmigrated log-prob| = {worst:.3g}")
    assert worst <= TOL
    return worst


# ---------------------------------------------------------------------- keys
def test_default_keys_are_todays_identity_and_seeds(model):
    plain = RolloutEngine(model, num_slots=5).generate(PROMPTS, PARAMS)
    keyed = RolloutEngine(model, num_slots=5).generate(PROMPTS, PARAMS, keys=range(len(PROMPTS)))
    for i, s in enumerate(plain):  # sorted by (prompt_index, sample_index)
        p, j = divmod(i, PARAMS.n)
        assert (s.seq_id, s.prompt_index, s.sample_index, s.seed) == (i, p, j, sequence_seed(PARAMS.seed, p, j))
    for a, b in zip(plain, keyed):
        assert (a.seq_id, a.seed, a.token_ids) == (b.seq_id, b.seed, b.token_ids) and torch.equal(a.logprobs, b.logprobs)


def test_samples_do_not_depend_on_position_in_the_call(model, reference):
    """Prompts permuted, keys = their original indices: per key the same samples. With every
    sequence running at once the batch holds the same set at every step: bitwise equal. With fewer
    slots the running sets differ (other key spans): tokens equal, log-probs to fp32 rounding."""
    perm = [3, 0, 6, 1, 5, 2, 4]
    everyone = len(PROMPTS) * PARAMS.n
    runs = {slots: [RolloutEngine(model, num_slots=slots).generate(p, PARAMS, keys=k)
                    for p, k in ((PROMPTS, None), ([PROMPTS[i] for i in perm], perm))] for slots in (everyone, 3)}
    for slots, (plain, permuted) in runs.items():
        assert [s.seq_id for s in permuted] == list(range(everyone))  # sorted by (key, sample): seq_id = key · n + sample
        for a, b in zip(plain, permuted):
            assert (a.prompt_index, a.sample_index, a.seed, a.token_ids) == (b.prompt_index, b.sample_index, b.seed, b.token_ids)
            assert b.token_ids == reference[b.seq_id].token_ids
            if slots == everyone:
                assert torch.equal(a.logprobs, b.logprobs)
            else:
                assert (a.logprobs - b.logprobs).abs().max() <= TOL


def test_seeds_keep_their_rule_with_keys(model):
    seeds = [11, 22, 33, 44, 55, 66, 77]
    params = SamplingParams(temperature=1.0, max_new_tokens=6, n=2)
    plain = RolloutEngine(model, num_slots=4).generate(PROMPTS, params, seeds=seeds)
    keyed = RolloutEngine(model, num_slots=4).generate(PROMPTS, params, seeds=seeds, keys=[k + 100 for k in range(len(PROMPTS))])
    assert [s.token_ids for s in plain] == [s.token_ids for s in keyed]
    assert [s.seed for s in keyed] == [sequence_seed(seeds[s.prompt_index - 100], 0, s.sample_index) for s in keyed]
    assert [s.prompt_index for s in keyed] == [s.prompt_index + 100 for s in plain]


def test_bad_keys_and_reserve(model):
    e = RolloutEngine(model, num_slots=2)
    with pytest.raises(UserError, match="distinct"):
        e.start(PROMPTS[:2], PARAMS, keys=[4, 4])
    with pytest.raises(UserError, match="3 keys for 2 prompts"):
        e.start(PROMPTS[:2], PARAMS, keys=[1, 2, 3])
    with pytest.raises(UserError, match="no prompts"):
        e.start([], PARAMS)
    with pytest.raises(UserError, match="reserve"):
        e.start([], PARAMS, reserve=(0, 10))
    assert e.generate([], PARAMS, reserve=(2, 30)) == []


# ---------------------------------------------------------------------- lossless migration
@pytest.mark.parametrize("at", [1, 3, 8, 15])
def test_migration_mid_generation_is_lossless(model, reference, at):
    """A → B (B has its own prompts and a reserve for A's longer ones) at step `at`: running
    sequences (the longest and the shortest so far) and waiting ones."""
    A, B = started(model, A_KEYS), started(model, B_KEYS, reserve=(6, POSITIONS))
    moved = []
    out = drive([A, B], {at: lambda A, B: move(A, B, moved, reference, seq_ids=mix(A))})
    assert any(k for _, k in moved) and any(not k for _, k in moved)
    check_lossless(out, reference)


def test_right_after_admission_one_token_and_shared_rows(model, reference):
    """After the first step each running sequence has exactly the token its prefill sampled. Moved
    with a waiting sibling into an empty worker, both are admitted together and feed the same row
    (the prompt): one prefill row serves a fresh and a migrated sequence."""
    A, B = started(model, A_KEYS), started(model, [], reserve=(8, POSITIONS), slots=8)
    assert B.cache_size() == (8, POSITIONS)
    assert started(model, [], reserve=(8, POSITIONS)).cache_size() == (6, POSITIONS)  # capped at num_slots
    moved = []
    # after step 1, slots 0..5 hold seqs 0..5 (prompts 0 and 1); 6, 7 are prompt 1's waiting samples
    out = drive([A, B], {1: lambda A, B: move(A, B, moved, reference, seq_ids=[5, 6, 4, 0, 7])})
    assert [k for _, k in moved] == [1, 0, 1, 1, 0]
    first = B.admissions[0]
    assert [(i, k) for i, k, _ in first] == [(5, 1), (6, 0), (4, 1), (0, 1), (7, 0)]
    assert first[0][2] == 2  # prompt 1's row (seqs 4..7) and prompt 0's (seq 0)
    check_lossless(out, reference, A_KEYS)


def test_migrating_back_to_the_source(model, reference):
    A, B = started(model, A_KEYS), started(model, [5], reserve=(6, POSITIONS))  # B: 2 free slots
    moved, back = [], []

    def there(A, B):
        move(A, B, moved, reference, seq_ids=mix(A, running=4, waiting=2))

    def home(A, B):
        in_b = {u["seq_id"] for u in B.load()["sequences"]}
        ids = [s.seq_id for s, _ in moved if s.seq_id in in_b]
        assert ids
        move(B, A, back, reference, seq_ids=ids)

    out = drive([A, B], {3: there, 7: home, 9: there})
    there_k = {s.seq_id: k for s, k in moved[:6]}
    assert any(0 < there_k[s.seq_id] < k for s, k in back)  # generated on A, then on B, then back on A
    check_lossless(out, reference, A_KEYS + [5])


def test_worker_that_starts_empty_takes_by_count(model, reference):
    """B only receives work (start([], reserve=)); count takes A's waiting ones, then running ones."""
    A, B = started(model, A_KEYS), started(model, [], reserve=(4, POSITIONS))
    moved = []
    plan = {2: lambda A, B: move(A, B, moved, reference, count=len(A.scheduler.waiting) + 3),
            6: lambda A, B: move(B, A, moved, reference, count=2)}
    out = drive([A, B], plan)
    assert sum(1 for _, k in moved if k) >= 3
    check_lossless(out, reference, A_KEYS)


def test_ping_pong_every_other_step(model, reference):
    A, B = started(model, A_KEYS), started(model, B_KEYS, reserve=(6, POSITIONS))
    moved = []

    def swap(src_first):
        def run(A, B):
            src, dst = (A, B) if src_first else (B, A)
            if src.scheduler.running:
                move(src, dst, moved, reference, count=len(src.scheduler.waiting) + 2)
        return run

    out = drive([A, B], {t: swap(t % 4 == 0) for t in range(2, 30, 2)})
    assert sum(1 for _, k in moved if k) > 10
    check_lossless(out, reference)


@pytest.mark.parametrize("where", ["A", "B", "AB"])
def test_migration_with_ngram_speculators(model, reference, where):
    """Speculation on the source, the destination or both: tokens still identical; freed slots are
    re-admitted while speculating (the speculator sees sequences only through the engine)."""
    specs = {name: ngram() if name in where else None for name in "AB"}
    A = started(model, A_KEYS, speculator=specs["A"])
    B = started(model, B_KEYS, reserve=(6, POSITIONS), speculator=specs["B"])
    moved = []
    plan = {3: lambda A, B: move(A, B, moved, reference, seq_ids=mix(A, running=4)),
            7: lambda A, B: move(B, A, moved, reference, count=len(B.scheduler.waiting) + 3)}
    out = drive([A, B], plan)
    assert all(s.stats.accepted > 0 for s in specs.values() if s is not None)
    check_lossless(out, reference)


def test_migration_with_the_static_decode(model, reference):
    """Compile mode's all-slots step (run eagerly) on both engines: a slot freed by `take` keeps
    writing its stale length's (dead) position until it is admitted again."""
    A = started(model, A_KEYS, static=True)
    B = started(model, B_KEYS, reserve=(6, POSITIONS), static=True, speculator=ngram())
    assert A.cache_size() == B.cache_size() == (6, POSITIONS)
    moved = []
    plan = {2: lambda A, B: move(A, B, moved, reference, seq_ids=mix(A, running=4)),
            6: lambda A, B: move(B, A, moved, reference, count=len(B.scheduler.waiting) + 2)}
    check_lossless(drive([A, B], plan), reference)


def test_reprefill_writes_the_kv_decoding_wrote(model, reference):
    """The migrated slot's live K/V [0, length) equals the source slot's (up to fp32 rounding), and
    its policy version is the one that generated its first tokens."""
    A, B = started(model, A_KEYS), started(model, [], reserve=(2, POSITIONS))
    A.policy_version, B.policy_version = 5, 6
    for _ in range(6):
        A.step()
    assert all(s.policy_version == 5 for s in A.finished)
    slot, seq = max(A.scheduler.running.items(), key=lambda kv: kv[1].prompt_len)
    L = int(A.lengths[slot])
    want = [(A.cache.k[i][slot, :L].clone(), A.cache.v[i][slot, :L].clone()) for i in range(model.config.num_layers)]
    fresh = A.scheduler.waiting[0]
    move(A, B, [], reference, seq_ids=[seq.seq_id, fresh.seq_id])
    B.step()
    assert seq.slot is not None and int(B.lengths[seq.slot]) == L + 1  # re-prefilled L, then decoded one
    for i, (k, v) in enumerate(want):
        assert (B.cache.k[i][seq.slot, :L] - k).abs().max() <= 1e-5
        assert (B.cache.v[i][seq.slot, :L] - v).abs().max() <= 1e-5
    assert seq.policy_version == 5 and fresh.policy_version == 6


# ---------------------------------------------------------------------- take rule, load, errors
def test_take_count_prefers_waiting_then_least_generated(model):
    e = RolloutEngine(model, num_slots=6)
    e.start(PROMPTS, PARAMS)
    for _ in range(7):  # stop tokens free slots, so later admissions have fewer tokens
        e.step()
    load = e.load()
    running = [s for s in load["sequences"] if s["running"]]
    waiting = [s["seq_id"] for s in load["sequences"] if not s["running"]]
    assert len({s["generated"] for s in running}) > 1 and waiting
    slot_of = {seq.seq_id: slot for slot, seq in e.scheduler.running.items()}
    least = sorted(running, key=lambda s: (s["generated"], -slot_of[s["seq_id"]]))[:2]
    taken = e.take(count=len(waiting) + 2)
    assert [s.seq_id for s in taken] == waiting[::-1] + [s["seq_id"] for s in least]
    assert [len(s.token_ids) for s in taken[len(waiting):]] == [s["generated"] for s in least]
    assert e.load()["running"] == len(running) - 2 and e.load()["waiting"] == 0
    assert e.take(count=0) == [] and len(e.take(count=100)) == len(running) - 2  # up to count: all that is left
    assert e.scheduler.done and e.take() == []


def test_load_reports_host_side_state(model):
    e = RolloutEngine(model, num_slots=4, speculator=ngram())  # speculator appends make host lengths stale
    e.start(PROMPTS, PARAMS)
    for _ in range(4):
        e.step()
    load = e.load()
    sched = e.scheduler
    assert (load["waiting"], load["running"], load["finished"]) == (len(sched.waiting), len(sched.running), len(e.finished))
    assert load["free_slots"] == 4 - load["running"] and load["slots"] == 4
    assert len(load["sequences"]) == load["waiting"] + load["running"]
    reported = {s["seq_id"]: s for s in load["sequences"]}
    for seq in e.take():
        r = reported[seq.seq_id]
        assert (r["prompt_index"], r["sample_index"], r["prompt_len"]) == (seq.prompt_index, seq.sample_index, seq.prompt_len)
        assert r["generated"] == len(seq.token_ids)
    assert e.load()["sequences"] == [] and e.scheduler.done


def test_take_errors(model):
    e = RolloutEngine(model, num_slots=4)
    with pytest.raises(UserError, match="call start first"):
        e.take()
    e.start(PROMPTS[:2], SamplingParams(temperature=0, max_new_tokens=1, n=1))
    e.step()  # max_new_tokens 1: both finish at prefill
    with pytest.raises(UserError, match="sequence 0 is finished"):
        e.take([0])
    with pytest.raises(UserError, match="sequence 9 is not in this engine"):
        e.take([9])
    e.start(PROMPTS[:2], PARAMS)
    with pytest.raises(UserError, match="repeated"):
        e.take([1, 1])
    with pytest.raises(UserError, match="not both"):
        e.take([1], count=1)
    e.release()
    with pytest.raises(UserError, match="call start first"):
        e.take()


def test_add_errors(model, reference):
    A, B = started(model, A_KEYS), started(model, B_KEYS)  # B: no reserve, positions = 4 + 24
    for _ in range(2):
        A.step()
    long_one = next(s for s in A.scheduler.waiting if s.prompt_index == 6)  # fresh: prompt 19 tokens
    short = next(s for s in A.scheduler.running.values() if s.prompt_index == 0)
    taken = A.take([short.seq_id, long_one.seq_id])
    before = list(B.scheduler.waiting)
    with pytest.raises(UserError, match=rf"sequence {long_one.seq_id} \(prompt 6, sample \d\) cannot fit the cache: "
                                        r"prompt 19 \+ max_new_tokens 24 > 28"):
        B.add(taken)
    assert list(B.scheduler.waiting) == before  # nothing queued
    B.add(taken[:1])
    with pytest.raises(UserError, match="already in this engine"):
        B.add(taken[:1])
    own = B.take([4 * PARAMS.n])  # B's prompt 4, sample 0: waiting, fresh
    with pytest.raises(UserError, match="already in this engine"):
        B.add(own * 2)
    B.add(own)
    B.step()
    with pytest.raises(UserError, match="still holds slot"):
        B.add([next(iter(B.scheduler.running.values()))])
    finished = RolloutEngine(model, num_slots=2).generate([[1]], SamplingParams(max_new_tokens=2))[0]
    with pytest.raises(UserError, match="is finished"):
        B.add([finished])
    with pytest.raises(UserError, match="call start first"):
        RolloutEngine(model).add(taken)


def test_scheduler_withdraw_and_budget_of_migrated_sequences():
    from fastrlhf.rollout.scheduler import Scheduler
    from fastrlhf.rollout.sequence import Sequence

    sched = Scheduler(num_slots=2, max_prefill_tokens=10)
    fresh, moved, other = Sequence(0, [1] * 4), Sequence(1, [1] * 4, token_ids=[2] * 5), Sequence(2, [1] * 3)
    assert (fresh.prefill_len, moved.prefill_len, moved.prefill_ids) == (4, 8, [1] * 4 + [2] * 4)
    for s in (fresh, moved, other):
        sched.add(s)
    assert sched.admit() == [fresh]  # 4 + 8 > 10: the migrated one waits for the next step's budget
    sched.withdraw([fresh, other])  # one running, one waiting (matched by identity)
    assert fresh.slot is None and list(sched.waiting) == [moved] and sched.running == {} and sorted(sched.free) == [0, 1]
