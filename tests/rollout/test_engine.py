"""Engine correctness: greedy = naive no-cache loop, batch/padding independence, seeds, and
rollout log-probs = the training forward's log-probs for the same tokens (≤ 1e-5, fp32 CPU)."""

import pytest
import torch
from helpers import tiny_model_dir

from fastrlhf.errors import UserError
from fastrlhf.model.hf_io import load_model
from fastrlhf.rollout.engine import RolloutEngine
from fastrlhf.rollout.sampler import SamplingParams, token_logprobs

PROMPTS = [[1, 2, 3], [4, 5], [6, 7, 8, 9, 10, 11, 12], [1, 2, 3], [3] * 9, [42], [17, 18, 19, 20]]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return {kind: load_model(tiny_model_dir(root, kind)) for kind in ("llama", "qwen3", "mistral")}


def naive_greedy(model, prompt, steps):
    ids = torch.tensor([prompt])
    with torch.no_grad():
        for _ in range(steps):
            ids = torch.cat([ids, model(ids)[:, -1].argmax(-1, keepdim=True)], dim=1)
    return ids[0, len(prompt):].tolist()


@pytest.mark.parametrize("kind", ["llama", "qwen3", "mistral"])
def test_greedy_equals_naive_loop(models, kind):
    model = models[kind]  # mistral: window 6 < sequence length, so the windowed decode mask is exercised
    out = RolloutEngine(model, num_slots=3).generate(PROMPTS, SamplingParams(temperature=0, max_new_tokens=12))
    assert len(out) == len(PROMPTS)  # more sequences than slots: continuous admission
    for seq in out:
        assert seq.token_ids == naive_greedy(model, PROMPTS[seq.prompt_index], 12)
        assert seq.finish_reason == "length"


def trainer_logprobs(model, seq, params):
    full = torch.tensor([seq.prompt_ids + seq.token_ids])
    with torch.no_grad():
        logits = model(full)[0, seq.prompt_len - 1 : -1]  # predicts each generated token
    return token_logprobs(logits, torch.tensor(seq.token_ids), params)


SETTINGS = [dict(temperature=1.0), dict(temperature=0.7), dict(temperature=1.3, top_p=0.8),
            dict(temperature=0.9, top_k=7), dict(temperature=0.6, top_k=20, top_p=0.9), dict(temperature=0)]


@pytest.mark.parametrize("setting", SETTINGS, ids=[str(s) for s in SETTINGS])
@pytest.mark.parametrize("num_slots", [1, 4, 16])
def test_rollout_logprobs_equal_training_logprobs(models, setting, num_slots):
    model = models["llama"]
    params = SamplingParams(max_new_tokens=10, n=2, seed=5, **setting)
    out = RolloutEngine(model, num_slots=num_slots).generate(PROMPTS, params)
    worst = 0.0
    for seq in out:
        assert torch.isfinite(seq.logprobs).all()
        worst = max(worst, (seq.logprobs - trainer_logprobs(model, seq, params)).abs().max().item())
    assert worst <= 1e-5


def test_logprob_comparison_is_sensitive(models):
    """The parity above would catch a temperature bug: T=1 log-probs differ from T=0.7 ones."""
    model = models["llama"]
    params = SamplingParams(temperature=0.7, max_new_tokens=6, seed=1)
    seq = RolloutEngine(model, num_slots=2).generate(PROMPTS[:1], params)[0]
    wrong = trainer_logprobs(model, seq, SamplingParams(temperature=1.0, max_new_tokens=6))
    assert (seq.logprobs - wrong).abs().max() > 1e-2


def test_independent_of_batch_composition_and_padding(models):
    model = models["llama"]
    params = SamplingParams(temperature=1.0, top_p=0.95, max_new_tokens=10, n=3)
    seeds = [11, 22, 33, 44, 55, 66, 77]
    full = RolloutEngine(model, num_slots=8).generate(PROMPTS, params, seeds=seeds)
    # prompt 2 alone, and prompt 2 in a different company (longer pad partners, other slot order)
    alone = RolloutEngine(model, num_slots=1).generate([PROMPTS[2]], params, seeds=[33])
    mixed = RolloutEngine(model, num_slots=5).generate([[9] * 15, PROMPTS[2]], params, seeds=[1, 33])
    want = [s for s in full if s.prompt_index == 2]
    for group in (alone, [s for s in mixed if s.prompt_index == 1]):
        for a, b in zip(want, group):
            assert a.token_ids == b.token_ids
            assert (a.logprobs - b.logprobs).abs().max() <= 1e-5


def test_same_seed_same_samples_different_seed_different(models):
    model = models["llama"]
    run = lambda seed: [s.token_ids for s in RolloutEngine(model, num_slots=4).generate(PROMPTS, SamplingParams(max_new_tokens=8, n=2, seed=seed))]
    a, b, c = run(0), run(0), run(1)
    assert a == b
    assert a != c
    # the n samples of one prompt differ from each other
    assert a[0] != a[1]


def test_stop_tokens_and_policy_version(models):
    model = models["llama"]
    greedy = RolloutEngine(model, num_slots=4).generate(PROMPTS[:3], SamplingParams(temperature=0, max_new_tokens=12))
    stop = greedy[0].token_ids[4]  # a token that greedy decoding emits at step 4 for prompt 0
    engine = RolloutEngine(model, num_slots=4)
    engine.policy_version = 7
    out = engine.generate(PROMPTS[:3], SamplingParams(temperature=0, max_new_tokens=12, stop_token_ids=[stop]))
    first = out[0]
    assert first.finish_reason == "stop"
    assert first.token_ids == greedy[0].token_ids[: first.token_ids.index(stop) + 1]
    assert len(first.logprobs) == len(first.token_ids)
    assert all(s.policy_version == 7 for s in out)
    for s, g in zip(out, greedy):
        if stop not in g.token_ids:
            assert s.token_ids == g.token_ids and s.finish_reason == "length"


def test_shared_prefix_prefill_matches_separate(models):
    """n samples share one prefill; the result equals prefilling each copy on its own."""
    model = models["llama"]
    params = SamplingParams(temperature=0.8, max_new_tokens=6, n=4)
    shared = RolloutEngine(model, num_slots=8).generate([PROMPTS[2]], params, seeds=[9])
    one_slot = RolloutEngine(model, num_slots=1).generate([PROMPTS[2]], params, seeds=[9])
    assert [s.token_ids for s in shared] == [s.token_ids for s in one_slot]


def test_bad_requests(models):
    engine = RolloutEngine(models["llama"], num_slots=2)
    with pytest.raises(UserError, match="max_position_embeddings"):
        engine.generate([[1] * 200], SamplingParams(max_new_tokens=100))
    with pytest.raises(UserError, match="empty prompt"):
        engine.generate([[]], SamplingParams())
    with pytest.raises(UserError, match="top_p"):
        SamplingParams(top_p=0)


def test_compiled_decode_matches_eager(models):
    """rollout.compile=true (static-shape decode over all slots) gives the same tokens and log-probs."""
    model = models["mistral"]
    params = SamplingParams(temperature=0.9, max_new_tokens=6, n=2, seed=3)
    eager = RolloutEngine(model, num_slots=4).generate(PROMPTS, params)
    compiled = RolloutEngine(model, num_slots=4, compile=True).generate(PROMPTS, params)
    for a, b in zip(eager, compiled):
        assert a.token_ids == b.token_ids
        assert (a.logprobs - b.logprobs).abs().max() <= 1e-5
