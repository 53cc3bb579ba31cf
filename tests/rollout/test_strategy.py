"""Workload-aware γ: the expected-tokens formula by hand, and choices under controlled costs."""

import math

import pytest
from helpers import tiny_model_dir

from fastrlhf.model.hf_io import load_model
from fastrlhf.rollout.engine import RolloutEngine
from fastrlhf.rollout.sampler import SamplingParams
from fastrlhf.rollout.speculative.ngram import NGramDrafter
from fastrlhf.rollout.speculative.strategy import PLAIN, VERIFY, AdaptiveSpeculator, batch_bucket, expected_tokens


def test_expected_tokens_by_hand():
    assert expected_tokens(0.0, 4) == 1.0  # nothing accepted: only the sampled token
    assert math.isclose(expected_tokens(0.5, 2), 1 + 0.5 + 0.25)
    assert math.isclose(expected_tokens(0.9, 4), (1 - 0.9 ** 5) / 0.1)
    assert expected_tokens(1.0, 3) == 4.0
    assert [batch_bucket(b) for b in (1, 2, 3, 5, 64, 65)] == [1, 2, 4, 8, 64, 128]


def test_choice_follows_acceptance_and_cost():
    s = AdaptiveSpeculator(NGramDrafter(), gammas=(0, 2, 8))
    # costs at bucket 8: plain 1.0; verification grows with T; drafting adds per γ
    s.seconds.update({(PLAIN, 8, 1): 1.0, (VERIFY, 8, 3): 1.4, (VERIFY, 8, 9): 3.8})
    s.draft_seconds.update({("ngram", 8, 2): 0.1, ("ngram", 8, 8): 0.2})
    assert s.cost("ngram", 2, 8) == pytest.approx(1.5) and s.cost("ngram", 8, 8) == pytest.approx(4.0)
    s.alphas["ngram"] = 0.05  # drafts almost never match → plain decoding
    assert s.choose(8) == (PLAIN, 0)
    s.alphas["ngram"] = 0.7  # E(2) = 2.19 per 1.5 s beats 1 per 1 s and E(8) = 3.2 per 4 s
    assert s.choose(8) == ("ngram", 2)
    s.alphas["ngram"] = 0.98  # nearly always right → deep drafts
    assert s.choose(8) == ("ngram", 8)
    # bucket 4 never measured: borrows bucket 8's verify cost and its draft cost scaled by 4/8
    assert s.cost("ngram", 2, 4) == pytest.approx(1.4 + 0.05)
    assert s.choose(3) == ("ngram", 8)
    s.gammas = (0, 2, 4, 8)
    assert s.choose(8) == ("ngram", 4)  # a verify length never timed anywhere is tried once first


def test_choice_between_drafters():
    """A draft model accepted more often but costing more per pass wins only where it pays."""
    s = AdaptiveSpeculator(NGramDrafter(), others={"draft": object()}, gammas=(0, 4))
    s.seconds.update({(PLAIN, 8, 1): 1.0, (VERIFY, 8, 5): 1.5})
    s.draft_seconds.update({("ngram", 8, 4): 0.1, ("draft", 8, 4): 0.5})
    s.alphas.update(ngram=0.3, draft=0.8)  # E: ngram 1.43 / 1.6 s = 0.89; draft 3.36 / 2 s = 1.68
    assert s.choose(8) == ("draft", 4)
    s.alphas["draft"] = 0.4  # E 1.65 / 2 s = 0.83 < plain 1 / 1 s
    assert s.choose(8) == (PLAIN, 0)
    s.alphas["ngram"] = 0.9  # E 4.1 / 1.6 s
    assert s.choose(8) == ("ngram", 4)
    assert s.choose(2) == ("ngram", 4)  # unmeasured bucket: the nearest measured one decides
    fresh = AdaptiveSpeculator(NGramDrafter(), others={"draft": object()}, gammas=(0, 4))
    fresh.seconds.update({(PLAIN, 8, 1): 1.0, (VERIFY, 8, 5): 1.5})
    fresh.draft_seconds[("ngram", 8, 4)] = 10.0  # measured: far too slow
    assert fresh.choose(8) == ("draft", 4)  # never-measured drafting counts as free: it gets tried


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return load_model(tiny_model_dir(tmp_path_factory.mktemp("m"), "llama", vocab_size=11))


def test_adaptive_run_profiles_then_settles_and_never_changes_samples(model):
    prompts = [[1, 2, 3], [4, 5], [6, 7, 8, 9], [3] * 5]
    params = SamplingParams(temperature=0.8, max_new_tokens=30, n=3, seed=2)
    plain = RolloutEngine(model, num_slots=6).generate(prompts, params)
    ticks = iter(range(10**6))
    spec = AdaptiveSpeculator(NGramDrafter(n_max=3), clock=lambda: next(ticks))  # every pass "costs" 1 tick
    fast = RolloutEngine(model, num_slots=6, speculator=spec).generate(prompts, params)
    assert [s.token_ids for s in plain] == [s.token_ids for s in fast]
    # start-up profile: every bucket up to the first batch (6 sequences -> 8) and every T, before step 1
    assert spec.profiled_up_to == 8
    assert set(spec.seconds) >= {(PLAIN, b, 1) for b in (1, 2, 4, 8)} | \
        {(VERIFY, b, 1 + g) for b in (1, 2, 4, 8) for g in (1, 2, 4, 8)}
    assert spec.draft_seconds  # drafting time measured on the steps that drafted
    # the profile makes every forward cost 1 tick, so the optimistic prior (α 0.5, drafting free)
    # picks the deepest draft first; a drafted step then really costs 3 ticks (draft + verify) and
    # few drafts match, so at the full batch the strategy settles on plain decoding (in the tail
    # a bucket whose verify cost only the profile measured, 1 tick like plain, may still draft)
    assert spec.chosen[0] == 8 and spec.alpha < 0.5
    full = [g for g, b in zip(spec.chosen, spec.chosen_batches) if b == 6]
    assert len(full) > 20 and full[-10:] == [0] * 10
    assert spec.per_drafter["ngram"].drafted == spec.stats.drafted > 0
    # accepted counts only drafts that became tokens: each pass commits its sampled token + those
    assert spec.stats.committed == spec.stats.passes + spec.stats.accepted


def test_adaptive_with_two_drafters_is_unchanged_greedy_and_tracks_each_drafter(model):
    """Greedy: whichever drafter and γ each step takes, the output is plain decoding's; per-drafter
    acceptance is tracked for each (sampled runs are covered by test_lossless.py)."""
    from fastrlhf.rollout.speculative.draft_model import DraftModelDrafter, truncated_draft

    prompts = [[1, 2, 3], [4, 5], [6, 7, 8, 9], [3] * 5]
    params = SamplingParams(temperature=0, max_new_tokens=30, n=3, seed=2)
    plain = RolloutEngine(model, num_slots=6).generate(prompts, params)
    ticks = iter(range(10**6))
    spec = AdaptiveSpeculator(NGramDrafter(n_max=3), others={"draft": DraftModelDrafter(truncated_draft(model, 1))},
                              gammas=(0, 2, 4), clock=lambda: next(ticks), alphas={"draft": 0.9})
    fast = RolloutEngine(model, num_slots=6, speculator=spec).generate(prompts, params)
    assert [s.token_ids for s in plain] == [s.token_ids for s in fast]
    assert spec.chosen_drafters[0] == "draft"  # the higher acceptance estimate goes first at equal cost
    assert spec.per_drafter["draft"].drafted > 0
    assert sum(spec.per_drafter[d].drafted for d in ("ngram", "draft")) == spec.stats.drafted
    assert 0 <= spec.alphas["draft"] < 1


def _greedy_continuations(model, prompts, max_new_tokens):
    params = SamplingParams(temperature=0, max_new_tokens=max_new_tokens, n=1)
    return [s.token_ids for s in RolloutEngine(model, num_slots=len(prompts)).generate(prompts, params)]


def test_drafts_past_a_stop_on_an_accepted_draft_are_not_counted(model):
    """Greedy, drafts = the exact continuation (remembered): every judged draft is right. A sequence
    that stops on an accepted draft leaves its later drafts unjudged, so acceptance is exactly 1."""
    from fastrlhf.rollout.speculative.verify import Speculator

    prompts = [[1, 2, 3], [4, 5]]
    long = _greedy_continuations(model, prompts, 16)
    stop = long[0][5]  # the first sequence stops at its 6th token (or earlier, if it occurs before)
    spec = Speculator(NGramDrafter(n_max=8), gamma=8)
    spec.remember(list(zip(prompts, long)))
    params = SamplingParams(temperature=0, max_new_tokens=16, n=1, stop_token_ids=(stop,))
    out = RolloutEngine(model, num_slots=2, speculator=spec).generate(prompts, params)
    assert out[0].finish_reason == "stop" and len(out[0].token_ids) <= 6
    assert spec.stats.drafted > 0 and spec.stats.accepted == spec.stats.drafted


def test_plain_steps_keep_sampling_a_deterministic_drafters_acceptance(model):
    """An estimate stuck at 0 would keep plain decoding forever; shadow drafts on plain steps find
    that the (remembered, exact) n-gram drafts are right, and the strategy starts drafting."""
    prompts = [[1, 2, 3], [4, 5], [6, 7, 8, 9]]
    exact = _greedy_continuations(model, prompts, 40)
    ticks = iter(range(10**6))
    spec = AdaptiveSpeculator(NGramDrafter(n_max=8), gammas=(0, 4), clock=lambda: next(ticks),
                              alphas={"ngram": 0.0}, shadow_every=2)
    spec.remember(list(zip(prompts, exact)))
    params = SamplingParams(temperature=0, max_new_tokens=40, n=1)
    out = RolloutEngine(model, num_slots=3, speculator=spec).generate(prompts, params)
    assert [s.token_ids for s in out] == exact
    first_draft = spec.chosen.index(4)
    assert first_draft > 0 and spec.chosen[:first_draft] == [0] * first_draft  # plain until shadows lift α
    assert spec.alphas["ngram"] > 0.5 and spec.per_drafter["ngram"].accepted > 0


def test_per_draft_acceptance_counts_judged_drafts_only():
    """Two passes of 4 drafts: one rejected at its 4th draft (3 accepted), one at its 1st. 5 drafts
    were judged (3 right); the 3 after the early rejection never were: α = 3/5, not 3/8."""
    from fastrlhf.rollout.speculative.verify import SpecStats

    stats = SpecStats(passes=2, drafted=8, accepted=3, rejected=2, committed=5)
    assert stats.per_draft_acceptance == pytest.approx(0.6)
    assert stats.acceptance == pytest.approx(3 / 8)
    assert SpecStats().per_draft_acceptance == 0.0
