"""Sample migration between engines (`take` / `add` / `load`, `start(keys=, reserve=)`): a sequence
taken out of one engine mid-generation and added to another with the same weights continues with
the same tokens it would have sampled without moving (counter-based randomness), with log-probs
equal up to fp32 reduction order (re-prefill feeds its tokens in one causal pass, not one decode
step each). Checked for several migration steps, right after admission (one token), migrating
back, workers that start empty, n-gram speculators and the static (compile-mode) decode — in both
modes: tokens only (re-prefill) and with the K/V (`take(with_kv=True)`: written into the new slot
bitwise, no forward pass; only the destination's decode batch differs)."""

import copy

import pytest
import torch
from helpers import tiny_model_dir

from fastrlhf.errors import UserError
from fastrlhf.model.hf_io import load_model
from fastrlhf.rollout.engine import RolloutEngine, sequence_seed
from fastrlhf.rollout.sampler import SamplingParams
from fastrlhf.rollout.sequence import Sequence
from fastrlhf.rollout.speculative.ngram import NGramDrafter
from fastrlhf.rollout.speculative.verify import Speculator

# the last prompt is longer than SHORT_QUERY (16): its prefill and re-prefill take the SDPA path
PROMPTS = [[1, 2, 3], [4, 5], [6, 7, 8, 9, 1, 2, 3], [3] * 9, [9], [5, 6, 7, 8], list(range(1, 10)) * 2 + [2]]
PARAMS = SamplingParams(temperature=1.0, max_new_tokens=24, n=4, seed=3, stop_token_ids=(10,))
A_KEYS, B_KEYS = [0, 1, 2, 3, 6], [4, 5]  # engine A's and engine B's prompts (keys = indices in PROMPTS)
POSITIONS = max(len(p) for p in PROMPTS) + PARAMS.max_new_tokens  # a cache any of these sequences fits
# migrated vs unmigrated log-probs: measured max |Δ| 4.8e-7 over every scenario below (fp32, CPU);
# sequences that never moved differ by as much from batch composition alone (other key spans). With
# the K/V shipped, the migrated sequences alone: 0 – 2.4e-7 (re-prefilled: 2.4e-7 – 4.8e-7)
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

        self.kv_admissions = []  # [(step, [seq_id admitted with its K/V])]
        self.steps = 0

    def _prefill(self, seqs):
        rows = len({tuple(s.prefill_ids) for s in seqs})
        self.admissions.append([(s.seq_id, len(s.token_ids), rows) for s in seqs])
        super()._prefill(seqs)

    def _write_kv(self, seqs):
        self.kv_admissions.append((self.steps, [s.seq_id for s in seqs]))
        super()._write_kv(seqs)

    def step(self):
        self.steps += 1
        super().step()


def ngram():
    return Speculator(NGramDrafter(n_max=3), gamma=3)


def engine(model, speculator=None, static=False, slots=6):
    """Static: compile mode's all-slots decode step, run eagerly (no cold compile)."""
    return Recording(model, num_slots=slots, speculator=speculator, compile=static, compiler=(lambda fn: fn) if static else None)


def started(model, keys, reserve=None, **kwargs):
    e = engine(model, **kwargs)
    e.start([PROMPTS[k] for k in keys], PARAMS, keys=keys, reserve=reserve)
    return e


def check_taken(src, taken, ref, with_kv=False, running=None):
    """What a taken sequence carries: its identity, outputs so far and — taken with_kv while running
    (seq ids `running`, default all with tokens) — its K/V rows [0, prompt + generated − 1) in the
    cache dtype. A waiting one carries K/V only if it was added with some (kept with_kv)."""
    cfg = src.model.config
    for s in taken:
        r = ref[s.seq_id]
        assert s.slot is None and s.finish_reason is None and not s.finished
        assert (s.prompt_index, s.sample_index, s.prompt_ids) == (r.prompt_index, r.sample_index, r.prompt_ids)
        assert s.seed == r.seed and s.token_ids == r.token_ids[: len(s.token_ids)]  # its outputs so far
        if s.token_ids:
            assert s.logprobs.dtype == torch.float32 and s.logprobs.device.type == "cpu"
            assert len(s.logprobs) == len(s.token_ids) and (s.logprobs - r.logprobs[: len(s.token_ids)]).abs().max() <= TOL
        was_running = bool(s.token_ids) if running is None else s.seq_id in running
        if with_kv and (was_running or s.kv is not None):
            n = s.prompt_len + len(s.token_ids) - 1
            assert s.kv.shape == (cfg.num_layers, 2, n, cfg.num_kv_heads, cfg.head_dim) and s.kv_len == n
            assert s.kv.dtype == src.dtype and s.kv.device.type == "cpu" and s.kv.is_contiguous()
            assert s.kv.untyped_storage().nbytes() == s.kv.nbytes == n * src.kv_bytes_per_token()  # compact
            assert s.prefill_ids == [] and s.prefill_len == 0  # admission feeds nothing
        else:
            assert s.kv is None


def move(src, dst, moved, ref, **take):
    """take(**take) from src, check what a taken sequence carries, add it to dst; appends
    (sequence, tokens it carried) to `moved`."""
    running = {s.seq_id for s in src.scheduler.running.values()}
    taken = src.take(**take)
    check_taken(src, taken, ref, take.get("with_kv", False), running)
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


# ---------------------------------------------------------------------- migration with the K/V
def kv_moved(engines):
    """Every (step, seq_id) admitted with its K/V (no forward pass) on `engines`."""
    return [(t, i) for e in engines for t, ids in e.kv_admissions for i in ids]


@pytest.mark.parametrize("at", [1, 3, 8, 15])
def test_kv_migration_mid_generation_is_lossless(model, reference, at):
    """As the re-prefill test, shipping the K/V: running sequences are admitted with no forward pass
    (never re-prefilled), waiting ones are prefilled fresh; tokens identical to the unmigrated run,
    log-probs within TOL (only the destination's decode batch differs)."""
    A, B = started(model, A_KEYS), started(model, B_KEYS, reserve=(6, POSITIONS))
    moved = []
    out = drive([A, B], {at: lambda A, B: move(A, B, moved, reference, seq_ids=mix(A), with_kv=True)})
    carried = {s.seq_id for s, k in moved if k}
    assert carried and any(not k for _, k in moved)
    assert {i for _, i in kv_moved([B])} == carried
    assert not any(k for adm in B.admissions for _, k, _ in adm)  # nothing re-prefilled
    assert all(s.kv is None for s, _ in moved)  # dropped once written
    check_lossless(out, reference)


def test_kv_written_is_the_source_slots_bitwise(model, reference):
    """The carried K/V is the source slot's rows [0, length) and the destination slot holds exactly
    them (bitwise) after admission and its first decode (which writes position length); the policy
    version is kept; the next decode's log-prob matches the unmigrated run."""
    A, B = started(model, A_KEYS), started(model, [], reserve=(2, POSITIONS))
    A.policy_version, B.policy_version = 5, 6
    for _ in range(6):
        A.step()
    slot, seq = max(A.scheduler.running.items(), key=lambda kv: kv[1].prompt_len)
    L = int(A.lengths[slot])
    want = A.cache.gather(torch.tensor([slot]), L)[0].clone()  # [layers, 2, L, K, h]
    k = int(A.n_generated[slot])
    fresh = A.scheduler.waiting[0]
    move(A, B, [], reference, seq_ids=[seq.seq_id, fresh.seq_id], with_kv=True)
    assert seq.kv is not None and torch.equal(seq.kv, want) and L == seq.prompt_len + k - 1
    assert seq.kv.nbytes == L * 2 * model.config.num_layers * model.config.num_kv_heads * model.config.head_dim * 4
    B.step()
    assert seq.slot is not None and int(B.lengths[seq.slot]) == L + 1  # written L, then decoded one
    got = B.cache.gather(torch.tensor([seq.slot]), L)[0]
    assert torch.equal(got, want)
    assert seq.policy_version == 5 and fresh.policy_version == 6
    assert int(B.n_generated[seq.slot]) == k + 1 and B.output_tokens([seq.slot], [k]) == [reference[seq.seq_id].token_ids[k]]
    step_diff = (B.out_logprobs[seq.slot, : k + 1].cpu() - reference[seq.seq_id].logprobs[: k + 1]).abs().max().item()
    print(f"after one decode on the destination: max |Δ log-prob| = {step_diff:.3g}")
    assert step_diff <= TOL


def test_mixed_admission_fresh_reprefill_and_kv(model, reference):
    """One `add` of a fresh, a re-prefilled and a KV sequence (plus a waiting sibling) into an empty
    worker: all admitted in one step — the fresh and the re-prefilled ones through one `_prefill`,
    the KV one by `_write_kv` — and all continue losslessly."""
    A, B = started(model, A_KEYS), started(model, [], reserve=(8, POSITIONS), slots=8)
    for _ in range(3):
        A.step()
    running = sorted(A.scheduler.running.values(), key=lambda s: s.slot)
    kv_one, tokens_one = running[0], running[1]
    fresh = list(A.scheduler.waiting)[:2]
    with_kv = A.take([kv_one.seq_id], with_kv=True)
    plain = A.take([tokens_one.seq_id] + [s.seq_id for s in fresh])
    check_taken(A, with_kv, reference, with_kv=True)
    check_taken(A, plain, reference)
    B.add([plain[0], with_kv[0], *plain[1:]])
    B.step()
    assert B.kv_admissions == [(1, [kv_one.seq_id])]
    fed = [(tokens_one.seq_id, len(tokens_one.token_ids))] + [(s.seq_id, 0) for s in fresh]
    assert [(i, k) for i, k, _ in B.admissions[0]] == fed
    assert len(B.admissions) == 1 and len(B.scheduler.running) == 4
    out = drive([A, B], {})
    check_lossless(out, reference, A_KEYS)


def test_migrating_back_with_kv(model, reference):
    """A → B with K/V, back to A with K/V, and out again: a sequence generated on A, then on B, then
    on A again, never re-prefilled."""
    A, B = started(model, A_KEYS), started(model, [5], reserve=(6, POSITIONS))  # B: 2 free slots
    moved, back = [], []

    def there(A, B):
        move(A, B, moved, reference, seq_ids=mix(A, running=4, waiting=2), with_kv=True)

    def home(A, B):
        in_b = {u["seq_id"] for u in B.load()["sequences"]}
        ids = [s.seq_id for s, _ in moved if s.seq_id in in_b]
        assert ids
        move(B, A, back, reference, seq_ids=ids, with_kv=True)

    out = drive([A, B], {3: there, 7: home, 9: there})
    there_k = {s.seq_id: k for s, k in moved[:6]}
    assert any(0 < there_k[s.seq_id] < k for s, k in back)  # generated on A, then on B, then back on A
    assert kv_moved([A]) and kv_moved([B])
    assert not any(k for e in (A, B) for adm in e.admissions for _, k, _ in adm)  # never re-prefilled
    check_lossless(out, reference, A_KEYS + [5])


def test_ping_pong_alternating_modes(model, reference):
    """Every other step the running ones move, with their K/V one time and tokens only the next."""
    A, B = started(model, A_KEYS), started(model, B_KEYS, reserve=(6, POSITIONS))
    moved = []

    def swap(t):
        def run(A, B):
            src, dst = (A, B) if t % 4 == 0 else (B, A)
            if src.scheduler.running:
                move(src, dst, moved, reference, count=len(src.scheduler.waiting) + 2, with_kv=t % 8 < 4)
        return run

    out = drive([A, B], {t: swap(t) for t in range(2, 30, 2)})
    assert kv_moved([A, B]) and any(k for e in (A, B) for adm in e.admissions for _, k, _ in adm)
    check_lossless(out, reference)


@pytest.mark.parametrize("where", ["A", "B", "AB"])
def test_kv_migration_with_ngram_speculators(model, reference, where):
    """Speculative verify passes write drafts past a slot's length: only [0, length) is carried, and
    a KV-admitted slot is speculated on at once. B has 2 free slots for A's first move (admitted
    with their K/V there); the rest wait on B still carrying theirs, and B → A moves them on."""
    specs = {name: ngram() if name in where else None for name in "AB"}
    A = started(model, A_KEYS, speculator=specs["A"])
    B = started(model, B_KEYS, reserve=(10, POSITIONS), speculator=specs["B"], slots=10)  # 2 free slots
    moved = []
    plan = {3: lambda A, B: move(A, B, moved, reference, seq_ids=mix(A, running=4), with_kv=True),
            7: lambda A, B: move(B, A, moved, reference, count=len(B.scheduler.waiting) + 3, with_kv=True)}
    out = drive([A, B], plan)
    assert all(s.stats.accepted > 0 for s in specs.values() if s is not None)
    assert kv_moved([A]) and kv_moved([B])
    check_lossless(out, reference)


def test_kv_migration_with_the_static_decode(model, reference):
    """Compile mode's all-slots step (identity compiler) on both engines, one with a speculator: a
    KV-admitted slot's next static step writes its own length (the first dead position)."""
    A = started(model, A_KEYS, static=True)
    B = started(model, B_KEYS, reserve=(10, POSITIONS), static=True, speculator=ngram(), slots=10)  # 2 free slots
    assert B.cache_size() == (10, POSITIONS)
    moved = []
    plan = {2: lambda A, B: move(A, B, moved, reference, seq_ids=mix(A, running=4), with_kv=True),
            6: lambda A, B: move(B, A, moved, reference, count=len(B.scheduler.waiting) + 2, with_kv=True)}
    out = drive([A, B], plan)
    assert kv_moved([A]) and kv_moved([B])
    check_lossless(out, reference)


def test_kv_migration_in_bf16(model):
    """A bf16 rollout copy ships bf16 K/V (half the bytes per token), bitwise; fp32 K/V is refused."""
    half = copy.deepcopy(model).to(torch.bfloat16)
    A, B = engine(half), engine(half)
    A.start([PROMPTS[k] for k in A_KEYS], PARAMS, keys=A_KEYS)
    B.start([], PARAMS, reserve=(2, POSITIONS))
    for _ in range(4):
        A.step()
    seq = next(iter(A.scheduler.running.values()))
    want = A.cache.gather(torch.tensor([seq.slot]), int(A.lengths[seq.slot]))[0].clone()
    taken = A.take([seq.seq_id], with_kv=True)
    assert seq.kv.dtype == torch.bfloat16 and torch.equal(seq.kv, want)
    assert A.kv_bytes_per_token() == model.config.kv_bytes_per_token(2) == engine(model).kv_bytes_per_token() // 2
    assert seq.kv.nbytes == seq.kv_len * A.kv_bytes_per_token()
    wrong = taken[0].kv
    taken[0].kv = wrong.float()
    with pytest.raises(UserError, match=rf"sequence {seq.seq_id} .* dtype torch.float32, this engine's cache is torch.bfloat16"):
        B.add(taken)
    taken[0].kv = wrong
    B.add(taken)
    B.step()
    assert torch.equal(B.cache.gather(torch.tensor([seq.slot]), len(want[0, 0]))[0], want)
    assert int(B.lengths[seq.slot]) == len(want[0, 0]) + 1 and int(B.n_generated[seq.slot]) == len(seq.token_ids) + 1


def test_kv_add_errors_name_the_sequence(model, reference):
    """A carried K/V that does not match the cache (layers, K/V, kv heads, head dim, dtype) or the
    sequence's length is refused before anything is queued, naming the sequence; a waiting sequence
    added with K/V keeps it when taken again with_kv and drops it otherwise."""
    A, B = started(model, A_KEYS), started(model, B_KEYS, reserve=(6, POSITIONS))
    for _ in range(3):
        A.step()
    first, second = sorted(A.scheduler.running.values(), key=lambda s: s.slot)[:2]
    taken = A.take([first.seq_id, second.seq_id], with_kv=True)
    check_taken(A, taken, reference, with_kv=True)
    seq, kv = taken[1], taken[1].kv
    name = rf"add: sequence {seq.seq_id} \(prompt {seq.prompt_index}, sample {seq.sample_index}\) carries kv"
    cfg = model.config
    bad = {
        rf"with 1 layers, this engine's cache has {cfg.num_layers}": kv[:1],
        rf"with {cfg.num_kv_heads - 1} kv_heads, this engine's cache has {cfg.num_kv_heads}": kv[:, :, :, 1:],
        rf"with {cfg.head_dim - 1} head_dim, this engine's cache has {cfg.head_dim}": kv[..., 1:],
        r"with 1 entries in dim 1, expected 2 \(K and V\)": kv[:, :1],
        r"of dtype torch.float64, this engine's cache is torch.float32": kv.double(),
        rf"of length {seq.kv_len - 1}, expected prompt {seq.prompt_len} \+ {len(seq.token_ids)} tokens − 1 = {seq.kv_len}":
            kv[:, :, 1:],
        r"that is not a \[layers, 2, length, kv_heads, head_dim\] tensor": kv[0],
    }
    before = list(B.scheduler.waiting)
    for message, wrong in bad.items():
        seq.kv = wrong
        with pytest.raises(UserError, match=f"{name} {message}"):
            B.add(taken)
        assert list(B.scheduler.waiting) == before  # nothing queued, not even the good first one
    seq.kv = kv
    kept = taken[0].kv
    B.add(taken)
    # not admitted yet (B has not stepped): taken again with_kv it keeps the K/V it came with, without it drops it
    again = B.take([first.seq_id], with_kv=True) + B.take([seq.seq_id])
    assert again[0].kv is kept and again[0].prefill_len == 0
    assert again[1].kv is None and again[1].prefill_len == seq.kv_len  # re-prefilled wherever it goes
    fresh = Sequence(999, [1, 2], kv=torch.zeros(cfg.num_layers, 2, 1, cfg.num_kv_heads, cfg.head_dim))
    with pytest.raises(UserError, match="sequence 999 .* carries kv but no tokens"):
        B.add([fresh])
    A.add(again)
    out = drive([A, B], {})
    check_lossless(out, reference)


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
