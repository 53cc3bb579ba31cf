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


def test_responses_from_an_earlier_call_draft_for_the_same_prompt(model):
    """One sample per prompt (no siblings), sampled: the second call drafts from the first call's
    responses to the same prompts, so it accepts more — and still commits exactly plain's tokens."""
    first = SamplingParams(temperature=1.0, max_new_tokens=30, n=1, seed=1)
    second = SamplingParams(temperature=1.0, max_new_tokens=30, n=1, seed=2)
    spec = Speculator(NGramDrafter(n_max=4), gamma=4)
    run(model, first, spec)
    before = dict(spec.stats.__dict__)
    fast = run(model, second, spec)
    assert [s.token_ids for s in fast] == [s.token_ids for s in run(model, second)]
    cold = Speculator(NGramDrafter(n_max=4), gamma=4)
    run(model, second, cold)
    warm_accepted = spec.stats.accepted - before["accepted"]
    assert warm_accepted > cold.stats.accepted


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


def test_kv_rollback_directly(model, single_thread):
    """After every speculative step (always-wrong drafts mixed with right ones), each running slot's
    cache holds exactly the KV of its committed tokens at positions < length, and length = prompt +
    generated − 1 (the last token is fed next). Checked against a fresh prefill of those tokens."""
    from fastrlhf.rollout.kv_cache import KVCache, PrefillView

    class HalfWrongDrafter:  # right (greedy) half of the time, wrong otherwise
        def __init__(self, model):
            self.model, self.calls = model, 0

        def reset(self):
            pass

        def propose(self, group, context, gamma):
            self.calls += 1
            with torch.no_grad():
                good = int(self.model(torch.tensor([context]))[0, -1].argmax())
            return [good] * min(gamma, 1) + [(good + 1) % 11] * (gamma - 1) if self.calls % 2 else [(good + 3) % 11] * gamma

    m = model
    params = SamplingParams(temperature=0, max_new_tokens=14, n=2, seed=1)
    spec = Speculator(HalfWrongDrafter(m), gamma=3)
    engine = RolloutEngine(m, num_slots=4, speculator=spec)
    engine.start(PROMPTS, params)
    checked = 0
    while not engine.scheduler.done:
        engine.step()
        for slot, seq in engine.scheduler.running.items():
            n = int(engine.n_generated[slot])
            tokens = seq.prompt_ids + engine.out_tokens[slot, :n].tolist()
            L = int(engine.lengths[slot])
            assert L == len(tokens) - 1 and int(engine.last_token[slot]) == tokens[-1]
            ref = KVCache(m.config, 1, L, torch.float32, "cpu")
            positions = torch.arange(L)[None]
            masks = m.masks_for(positions, positions, torch.ones(1, L, dtype=torch.bool))
            with torch.no_grad():
                m.hidden_states(torch.tensor([tokens[:L]]), positions, masks, PrefillView(ref, torch.tensor([0]), torch.tensor([0]), L))
            for layer in range(m.config.num_layers):
                assert torch.allclose(engine.cache.k[layer][slot, :L], ref.k[layer][0], atol=1e-5)
                assert torch.allclose(engine.cache.v[layer][slot, :L], ref.v[layer][0], atol=1e-5)
            checked += 1
    assert checked > 20 and 0 < spec.stats.accepted < spec.stats.drafted
