"""Speculative decoding with the n-gram drafter: same tokens as plain decoding, log-probs from the
actor, real acceptance on sibling-heavy workloads, KV rollback after rejections."""

import pytest
import torch
from helpers import tiny_model_dir

from fastrlhf.model.hf_io import load_model
from fastrlhf.rollout.engine import RolloutEngine
from fastrlhf.rollout.sampler import SamplingParams
from fastrlhf.rollout.speculative.ngram import NGramDrafter
from fastrlhf.rollout.speculative.verify import Speculator

PROMPTS = [[1, 2, 3], [4, 5], [6, 7, 8, 9, 1, 2, 3], [3] * 9, [9]]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return load_model(tiny_model_dir(tmp_path_factory.mktemp("m"), "llama", vocab_size=11))


def run(model, params, speculator=None, slots=4):
    return RolloutEngine(model, num_slots=slots, speculator=speculator).generate(PROMPTS, params)


@pytest.mark.parametrize("setting", [dict(temperature=0), dict(temperature=1.0), dict(temperature=0.7, top_p=0.9),
                                     dict(temperature=1.3, top_k=5)], ids=str)
@pytest.mark.parametrize("gamma", [1, 3, 6])
def test_speculation_commits_exactly_the_plain_tokens(model, setting, gamma):
    params = SamplingParams(max_new_tokens=24, n=3, seed=4, stop_token_ids=(10,), **setting)
    plain = run(model, params)
    spec = Speculator(NGramDrafter(n_max=3), gamma=gamma)
    fast = run(model, params, spec)
    for a, b in zip(plain, fast):
        assert a.token_ids == b.token_ids and a.finish_reason == b.finish_reason
        assert (a.logprobs - b.logprobs).abs().max() <= 1e-5
    assert spec.stats.drafted > 0 and spec.stats.passes > 0
    # fewer forward passes than tokens whenever drafts were accepted
    assert spec.stats.committed == sum(len(s.token_ids) for s in fast) - len(fast)  # first token comes from prefill
    if spec.stats.accepted:
        assert spec.stats.passes < spec.stats.committed


def test_vocabulary_of_11_with_siblings_gets_real_acceptance(model):
    """Tiny vocabulary + greedy siblings repeat each other: most drafts are accepted."""
    params = SamplingParams(temperature=0, max_new_tokens=30, n=4)
    spec = Speculator(NGramDrafter(n_max=4), gamma=4)
    run(model, params, spec, slots=2)  # 2 slots: later siblings draft from finished ones
    assert spec.stats.acceptance > 0.5
    assert spec.stats.tokens_per_pass > 1.5


def test_kv_rollback_after_rejection():
    """A drafter that is always wrong forces a rejection every pass: KV written for the rejected
    drafts must never be read, so the output still equals plain decoding."""

    class WrongDrafter:
        def reset(self):
            pass

        def extend(self, *a):
            pass

        def propose(self, group, context, gamma):
            return [(context[-1] + 1) % 11] * gamma  # arbitrary, mostly wrong

    m = load_model(tiny_model_dir(__import__("pathlib").Path(__import__("tempfile").mkdtemp()), "qwen3", vocab_size=11))
    params = SamplingParams(temperature=0.9, max_new_tokens=20, n=2, seed=1)
    plain = RolloutEngine(m, num_slots=3).generate(PROMPTS, params)
    spec = Speculator(WrongDrafter(), gamma=5)
    fast = RolloutEngine(m, num_slots=3, speculator=spec).generate(PROMPTS, params)
    assert [s.token_ids for s in plain] == [s.token_ids for s in fast]
    assert spec.stats.drafted > spec.stats.accepted
