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
    # few drafts match, so the strategy settles on plain decoding
    assert spec.chosen[0] == 8 and spec.alpha < 0.5
    assert spec.chosen[-10:] == [0] * 10
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
