"""Draft-model drafter: truncated copies, greedy speculative = greedy plain, committed log-probs =
the trainer's, the draft's q rows = its uncached forward (draft-cache rollback), distillation."""

import pytest
import torch
from helpers import tiny_model_dir

from fastrlhf.model.hf_io import load_model
from fastrlhf.rollout.engine import RolloutEngine
from fastrlhf.rollout.sampler import SamplingParams, sampling_logprobs
from fastrlhf.rollout.speculative.distill import distill_draft, pack_rollouts
from fastrlhf.rollout.speculative.draft_model import DraftModelDrafter, truncated_draft
from fastrlhf.rollout.speculative.verify import Speculator
from fastrlhf.train.logprobs import sequence_logprobs

PROMPTS = [[1, 2, 3], [4, 5], [6, 7, 8, 9, 1, 2, 3], [3] * 9, [9]]


@pytest.fixture(scope="module")
def models(tmp_path_factory, single_thread):
    root = tmp_path_factory.mktemp("m")
    return {kind: load_model(tiny_model_dir(root, kind, vocab_size=11, num_hidden_layers=3)) for kind in ("llama", "qwen3", "mistral")}


def test_truncated_draft_copies_the_first_layers():
    torch.manual_seed(0)
    from fastrlhf.model.config import ModelConfig
    from fastrlhf.model.decoder import CausalLM

    actor = CausalLM(ModelConfig(vocab_size=13, hidden_size=16, intermediate_size=32, num_layers=3, num_heads=2,
                                 num_kv_heads=1, head_dim=8, score_head=True)).eval()
    ids = torch.tensor([[1, 4, 2, 7]])
    assert torch.equal(truncated_draft(actor, 3)(ids), actor(ids))  # all layers: the same model
    draft = truncated_draft(actor, 1)
    assert len(draft.model.layers) == 1 and draft.config.num_layers == 1 and not hasattr(draft, "score")
    with torch.no_grad():  # manual: embeddings → block 0 → final norm → head of the actor
        positions = torch.arange(4)[None]
        masks = actor.masks_for(positions, positions, torch.ones(1, 4, dtype=torch.bool))
        x = actor.model.embed_tokens(ids)
        cos, sin = actor.model.rotary(positions, x.dtype)
        x = actor.model.layers[0](x, cos, sin, masks[None], None)
        assert torch.allclose(draft(ids), actor.logits(actor.model.norm(x)), atol=1e-6)
        draft.lm_head.weight.add_(1.0)  # own tensors: training the draft leaves the actor alone
    assert not torch.equal(draft.lm_head.weight, actor.lm_head.weight)
    with pytest.raises(ValueError):
        truncated_draft(actor, 4)


@pytest.mark.parametrize("kind", ["llama", "qwen3", "mistral"])  # mistral: sliding window 6 < length
@pytest.mark.parametrize("gamma", [1, 4])
def test_greedy_speculative_equals_greedy_plain(models, kind, gamma):
    model = models[kind]
    params = SamplingParams(temperature=0, max_new_tokens=16, n=2, stop_token_ids=(10,))
    plain = RolloutEngine(model, num_slots=3).generate(PROMPTS, params)
    spec = Speculator(DraftModelDrafter(truncated_draft(model, 1)), gamma=gamma)
    fast = RolloutEngine(model, num_slots=3, speculator=spec).generate(PROMPTS, params)
    for a, b in zip(plain, fast):
        assert a.token_ids == b.token_ids and a.finish_reason == b.finish_reason
        assert (a.logprobs - b.logprobs).abs().max() <= 1e-5
    assert 0 < spec.stats.accepted < spec.stats.drafted


class Recording(DraftModelDrafter):
    """Keeps every pass's contexts, drafts and q rows."""

    def __init__(self, model):
        super().__init__(model)
        self.passes = []

    def draft_batch(self, engine, slots, seqs, contexts, gammas):
        draft = super().draft_batch(engine, slots, seqs, contexts, gammas)
        self.passes.append((contexts, draft))
        return draft


class Alternating(Speculator):
    """Plain decoding on every third step: the drafter then meets contexts that grew by tokens it
    never saw, next to its own stale drafts (the case the draft cache's prefix check exists for)."""

    def decode(self, engine, active):
        self.calls = getattr(self, "calls", 0) + 1
        return engine.decode_one(active) if self.calls % 3 == 0 else super().decode(engine, active)


@pytest.mark.parametrize("setting", [dict(temperature=1.0), dict(temperature=0.7, top_p=0.9), dict(temperature=1.2, top_k=5)], ids=str)
@pytest.mark.parametrize("speculator", [Speculator, Alternating])
def test_sampled_speculation_logprobs_and_draft_cache(models, setting, speculator):
    model = models["mistral"]
    params = SamplingParams(max_new_tokens=16, n=3, seed=3, stop_token_ids=(10,), **setting)
    drafter = Recording(truncated_draft(model, 1))
    spec = speculator(drafter, gamma=3)
    out = RolloutEngine(model, num_slots=4, speculator=spec).generate(PROMPTS, params)
    assert 0 < spec.stats.accepted < spec.stats.drafted
    # committed-token log-probs = the trainer's recomputation on the same tokens
    sequences, attention_mask, response_mask = pack_rollouts(out)
    with torch.no_grad():
        trainer = sequence_logprobs(model, sequences, attention_mask, response_mask, params)
    for i, s in enumerate(out):
        assert (s.logprobs - trainer[i, s.prompt_len : s.prompt_len + len(s.token_ids)]).abs().max() <= 1e-5
    # every q row the drafter returned = the draft model's uncached sampling distribution at that point
    draft_model = drafter.model
    worst = 0.0
    for contexts, draft in drafter.passes[::2]:
        for b, context in enumerate(contexts):
            g = int(draft.lengths[b])
            if g == 0:
                continue
            ids = torch.tensor([context + draft.tokens[b, : g - 1].tolist()])
            with torch.no_grad():
                q = sampling_logprobs(draft_model(ids)[0, len(context) - 1 :], params).exp()  # [g, V]
            worst = max(worst, (q - draft.q[b, :g]).abs().max().item())
    assert worst <= 1e-5


def test_distillation_lowers_kl_and_raises_acceptance(models):
    actor = models["llama"]
    params = SamplingParams(temperature=1.0, max_new_tokens=12, n=8, seed=0)
    torch.manual_seed(0)
    draft = truncated_draft(actor, 1)
    with torch.no_grad():
        for p in draft.parameters():  # scramble it: distillation must do the work
            p.add_(torch.randn_like(p) * 0.5)

    def acceptance(seed):
        spec = Speculator(DraftModelDrafter(draft), gamma=3)
        RolloutEngine(actor, num_slots=40, speculator=spec).generate(PROMPTS, SamplingParams(**{**params.__dict__, "seed": seed}))
        return spec.stats.acceptance

    before = acceptance(seed=9)
    rollouts = RolloutEngine(actor, num_slots=40).generate(PROMPTS, params)
    stats = distill_draft(draft, actor, *pack_rollouts(rollouts), params, epochs=30, micro_batch=20, lr=3e-3)
    assert stats["distill/kl_last"] < 0.5 * stats["distill/kl_first"]
    assert acceptance(seed=9) > before + 0.1
