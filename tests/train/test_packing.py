"""Packed training (train/packing.py) computes what the padded path computes: log-probs, entropy,
gradients and whole actor updates, to 1e-6 in fp32 — and never takes the LM head over [N, T, V]."""

import copy

import pytest
import torch

from fastrlhf.config import AlgorithmSection
from fastrlhf.dataflow.batch import Batch
from fastrlhf.model.config import ModelConfig
from fastrlhf.model.decoder import CausalLM, Segments
from fastrlhf.model.precision import Precision
from fastrlhf.rollout.sampler import SamplingParams
from fastrlhf.train.logprobs import micro_logprobs, sequence_logprobs
from fastrlhf.train.packing import micro_batch_rows, pack_rows, packed_logprobs, token_budget_groups
from fastrlhf.train.workers import ActorWorker

FP32 = Precision(torch.float32, "cpu")


def model(**overrides):
    torch.manual_seed(0)
    cfg = dict(vocab_size=97, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
               head_dim=8, max_position_embeddings=64)
    return CausalLM(ModelConfig(**{**cfg, **overrides})).double().float()


def ragged_rows(n=7, seed=1, vocab=97):
    """Right-padded rows of different lengths: prompt 3-6 tokens, response 1-9 tokens."""
    g = torch.Generator().manual_seed(seed)
    prompts = [int(torch.randint(3, 7, (1,), generator=g)) for _ in range(n)]
    responses = [int(torch.randint(1, 10, (1,), generator=g)) for _ in range(n)]
    T = max(p + r for p, r in zip(prompts, responses))
    sequences = torch.zeros(n, T, dtype=torch.long)
    attention = torch.zeros(n, T, dtype=torch.long)
    response = torch.zeros(n, T, dtype=torch.long)
    for i, (p, r) in enumerate(zip(prompts, responses)):
        sequences[i, : p + r] = torch.randint(3, vocab, (p + r,), generator=g)
        attention[i, : p + r] = 1
        response[i, p: p + r] = 1
    return sequences, attention, response


@pytest.mark.parametrize("params", [SamplingParams(temperature=1.0), SamplingParams(temperature=0.7),
                                    SamplingParams(temperature=0.8, top_k=20, top_p=0.9), SamplingParams(temperature=0)],
                         ids=["t1", "t0.7", "topk-topp", "greedy"])
def test_packed_logprobs_and_gradients_equal_padded(params):
    sequences, attention, response = ragged_rows()
    padded_model, packed_model = model(), model()
    padded, logits = sequence_logprobs(padded_model, sequences, attention, response, params, return_logits=True)
    packed, entropy = packed_logprobs(packed_model, pack_rows(sequences, attention, response), params)
    finite = torch.isfinite(padded)
    assert torch.equal(finite, torch.isfinite(packed))
    assert torch.allclose(packed[finite], padded[finite], atol=1e-6, rtol=0)
    # the same loss on the finite tokens back-propagates to the same gradients
    weights = torch.randn(padded.shape, generator=torch.Generator().manual_seed(2))
    torch.where(finite, padded * weights, 0).sum().backward()
    torch.where(finite, packed * weights, 0).sum().backward()
    for (name, a), b in zip(padded_model.named_parameters(), packed_model.parameters()):
        assert torch.allclose(a.grad, b.grad, atol=1e-6, rtol=1e-5), name
    # entropy of the sampling distribution at the same positions
    _, padded_entropy = micro_logprobs(padded_model, Batch({"sequences": sequences, "attention_mask": attention,
                                                            "response_mask": response}), params, False, FP32)
    assert torch.allclose(entropy, padded_entropy, atol=1e-5)
    assert float(entropy[response.bool()].min()) >= 0


def test_sliding_window_layers_pack_too():
    sequences, attention, response = ragged_rows(seed=3)
    m = model(sliding_window=[4, None])
    params = SamplingParams(temperature=1.0)
    padded = sequence_logprobs(m, sequences, attention, response, params)
    packed, _ = packed_logprobs(m, pack_rows(sequences, attention, response), params)
    assert torch.allclose(packed, padded, atol=1e-6)


def test_segments_never_attend_across_sequences():
    """Changing one packed sequence's tokens changes no other sequence's hidden states."""
    m = model()
    lengths = [5, 3, 8]
    ids = torch.randint(3, 97, (sum(lengths),), generator=torch.Generator().manual_seed(0))
    seg = Segments.from_lengths(lengths, "cpu")
    assert seg.positions.tolist() == [0, 1, 2, 3, 4, 0, 1, 2, 0, 1, 2, 3, 4, 5, 6, 7]
    before = m.packed_hidden_states(ids, seg)
    changed = ids.clone()
    changed[5:8] = (changed[5:8] + 1) % 97
    after = m.packed_hidden_states(changed, seg)
    assert torch.equal(before[:5], after[:5]) and torch.equal(before[8:], after[8:])
    assert not torch.equal(before[5:8], after[5:8])
    # each sequence alone gives the same states
    alone = m.packed_hidden_states(ids[8:], Segments.from_lengths([8], "cpu"))
    assert torch.allclose(before[8:], alone, atol=1e-6)


def test_token_budget_groups_cover_every_row_once_and_respect_the_budget():
    g = torch.Generator().manual_seed(0)
    for trial in range(50):
        unit = 1 + trial % 2
        lengths = torch.randint(1, 40, (2 * (1 + trial % 9),), generator=g).tolist()
        budget = int(torch.randint(10, 120, (1,), generator=g))
        groups = token_budget_groups(lengths, budget, unit)
        rows = sorted(r for group in groups for r in group)
        assert rows == list(range(len(lengths)))
        for group in groups:
            assert all(group[i] % unit == 0 and group[i + unit - 1] == group[i] + unit - 1
                       for i in range(0, len(group), unit))  # whole units
            tokens = sum(lengths[r] for r in group)
            assert tokens <= budget or len(group) == unit  # an oversized unit gets a micro-batch of its own


def test_packed_path_never_takes_the_lm_head_over_all_positions(monkeypatch):
    sequences, attention, response = ragged_rows()
    m = model()
    monkeypatch.setattr(CausalLM, "logits", lambda self, hidden: pytest.fail("full LM head in the packed path"))
    logp, _ = micro_logprobs(m, Batch({"sequences": sequences, "attention_mask": attention, "response_mask": response}),
                             SamplingParams(), True, FP32)
    assert logp.shape == sequences.shape


# ---------------------------------------------------------------------------- whole updates
class _NoEngine:
    policy_version = 0
    speculator = None


def rollout_batch(n=8, group=4, seed=5):
    sequences, attention, response = ragged_rows(n=n, seed=seed)
    m = model()
    with torch.no_grad():
        logprobs = sequence_logprobs(m, sequences, attention, response, SamplingParams())
    g = torch.Generator().manual_seed(seed)
    return Batch({"sequences": sequences, "attention_mask": attention, "response_mask": response,
                  "logprobs": logprobs, "ref_logprobs": logprobs + 0.01 * torch.randn(logprobs.shape, generator=g) * response,
                  "prompt_index": torch.arange(n) // group, "rewards": torch.randn(n, generator=g)})


def one_update(name, micro_batch_size, micro_batch_tokens, mini_batches=1, precision=FP32, **algo):
    m = model()
    # SGD: the weight change is lr × gradient (Adam would blow rounding-level gradients up to ±lr)
    optimizer = torch.optim.SGD(m.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    actor = ActorWorker(m, None, _NoEngine(), SamplingParams(), optimizer, scheduler,
                        AlgorithmSection(name=name, **algo), micro_batch_size, mini_batches, grad_clip=1.0,
                        micro_batch_tokens=micro_batch_tokens, precision=precision)
    stats = actor.train(rollout_batch())
    return stats, m


@pytest.mark.parametrize("name", ["grpo", "online_dpo"])
def test_packed_update_equals_padded_update(name):
    padded_stats, padded = one_update(name, micro_batch_size=3, micro_batch_tokens=0, mini_batches=2)
    for budget in (12, 40, 10_000):
        stats, packed = one_update(name, micro_batch_size=3, micro_batch_tokens=budget, mini_batches=2)
        assert stats["loss"] == pytest.approx(padded_stats["loss"], abs=1e-6)
        assert stats["grad_norm"] == pytest.approx(padded_stats["grad_norm"], rel=1e-5)
        for a, b in zip(padded.parameters(), packed.parameters()):
            assert torch.allclose(a, b, atol=1e-6)


def test_micro_batch_rows_by_rows_when_no_budget():
    attention = torch.ones(7, 4, dtype=torch.long)
    assert [r.tolist() for r in micro_batch_rows(attention, 3, 0)] == [[0, 1, 2], [3, 4, 5], [6]]
    assert [r.tolist() for r in micro_batch_rows(attention[:6], 3, 0, unit=2)] == [[0, 1], [2, 3], [4, 5]]


def test_recomputed_old_logprobs_make_the_first_ratio_exactly_one():
    """π_old from the trainer's own forward: the first mini-batch's ratio is 1 however far the engine's
    log-probs are (here: shifted on purpose), and the truncated IS weights carry the engine gap."""
    batch = rollout_batch()
    batch = batch.update({"logprobs": batch["logprobs"] - 0.3 * batch["response_mask"]})
    m = model()
    optimizer = torch.optim.SGD(m.parameters(), lr=0.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    results = {}
    for choice in ("never", "always"):
        actor = ActorWorker(copy.deepcopy(m), None, _NoEngine(), SamplingParams(), optimizer, scheduler,
                            AlgorithmSection(name="grpo", recompute_logprobs=choice, tis_cap=1.2), 64,
                            micro_batch_tokens=4096)
        results[choice] = actor.train(batch)
    assert results["always"]["ratio"] == pytest.approx(1.0, abs=1e-6)
    assert results["never"]["ratio"] == pytest.approx(float(torch.tensor(0.3).exp()), rel=1e-3)
    assert results["always"]["tis_weight"] == pytest.approx(1.2, abs=1e-6)  # exp(0.3) > cap
    assert results["always"]["mismatch/abs_mean"] == pytest.approx(0.3, abs=1e-5)


def test_bf16_update_trains_fp32_masters_and_reports_the_mismatch():
    stats, m = one_update("grpo", 64, 4096, precision=Precision(torch.bfloat16, "cpu"))
    assert all(p.dtype == torch.float32 for p in m.parameters())
    assert torch.isfinite(torch.tensor(stats["loss"])) and stats["grad_norm"] > 0
    # the engine's log-probs here are fp32 ones: bf16 trainer differs a little, not a lot
    assert 0 < stats["mismatch/abs_mean"] < 0.1
    assert stats["ratio"] == pytest.approx(1.0, abs=1e-6)  # auto: recomputed in bf16
