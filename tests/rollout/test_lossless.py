"""Losslessness, statistically: whole generated sequences with speculation follow the plain
sampling distribution, computed exactly by enumeration.

A 3-layer model with a 6-token vocabulary (LM head scaled so distributions are peaked and the
temperature matters), EOS = 0, at most 4 new tokens: every possible completion is enumerated and its
exact probability computed with `sampling_logprobs` (temperature, top-p) from the full (uncached)
forward. 20 000 samples per setting (one engine call, distinct per-sequence seeds) are then checked
with Pearson's χ² (cells with expected count < 5 pooled). Negative controls prove the test has
power at the same sample size: a verifier that ignores the temperature in p, or in q, is rejected.
"""

from collections import Counter

import pytest
import torch

from fastrlhf.model.config import ModelConfig
from fastrlhf.model.decoder import CausalLM
from fastrlhf.rollout.engine import RolloutEngine
from fastrlhf.rollout.sampler import SamplingParams, sampling_logprobs
from fastrlhf.rollout.speculative import verify
from fastrlhf.rollout.speculative.draft_model import DraftModelDrafter, truncated_draft
from fastrlhf.rollout.speculative.ngram import NGramDrafter
from fastrlhf.rollout.speculative.verify import Speculator

V, EOS, PROMPT, MAX_NEW, N = 6, 0, [1, 2], 4, 20_000
SETTINGS = [dict(temperature=1.0, top_p=0.9), dict(temperature=0.7, top_p=0.9)]
CONTROL = dict(temperature=0.7)  # no filter: every completion is possible, so only the χ² can catch a bug
PASS_P, REJECT_P = 1e-3, 1e-6  # correct samplers must pass at 1e-3; broken ones must fail far below it


@pytest.fixture(scope="module")
def actor(single_thread):
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=V, hidden_size=32, intermediate_size=64, num_layers=3, num_heads=4, num_kv_heads=2,
                      head_dim=8, max_position_embeddings=32)
    model = CausalLM(cfg)
    with torch.no_grad():
        model.lm_head.weight.mul_(3.0)  # peaked distributions: temperature changes them a lot
    return model.eval()


def params_for(setting, seed=1):
    return SamplingParams(max_new_tokens=MAX_NEW, n=N, seed=seed, stop_token_ids=(EOS,), **setting)


@torch.no_grad()
def exact_distribution(model, params) -> dict[tuple[int, ...], float]:
    """P(completion) for every completion reachable under the sampling distribution."""
    done, frontier = {}, {(): 1.0}
    for _ in range(MAX_NEW):
        prefixes = list(frontier)
        ids = torch.tensor([PROMPT + list(p) for p in prefixes])  # all prefixes of one level share a length
        probs = sampling_logprobs(model(ids)[:, -1], params).double().exp()  # [P, V]
        nxt = {}
        for prefix, row in zip(prefixes, probs.tolist()):
            for token, p in enumerate(row):
                if p > 0:
                    seq, mass = prefix + (token,), frontier[prefix] * p
                    (done if token == EOS or len(seq) == MAX_NEW else nxt)[seq] = mass
        frontier = nxt
    total = sum(done.values())
    assert abs(total - 1) < 1e-6  # fp32 log-probs
    return {seq: mass / total for seq, mass in done.items()}


def chi2_pvalue(samples: list[tuple[int, ...]], exact: dict) -> float:
    """Pearson χ² goodness of fit; cells with expected count < 5 pooled into one. Survival function
    of χ²_k at x = Q(k/2, x/2), the regularised upper incomplete gamma function."""
    counts, n = Counter(samples), len(samples)
    impossible = set(counts) - set(exact)
    assert not impossible, f"sampled completions with probability 0: {sorted(impossible)[:5]}"
    big = [s for s in exact if n * exact[s] >= 5]
    cells = [(counts[s], n * exact[s]) for s in big]
    rest = [s for s in exact if n * exact[s] < 5]
    if rest:
        cells.append((sum(counts[s] for s in rest), n * sum(exact[s] for s in rest)))
    stat = sum((o - e) ** 2 / e for o, e in cells)
    df = len(cells) - 1
    return float(torch.special.gammaincc(torch.tensor(df / 2, dtype=torch.float64), torch.tensor(stat / 2, dtype=torch.float64)))


def completions(model, params, speculator=None) -> list[tuple[int, ...]]:
    out = RolloutEngine(model, num_slots=N, speculator=speculator).generate([PROMPT], params)
    return [tuple(s.token_ids) for s in out]


def make_speculator(kind: str, actor) -> Speculator:
    if kind == "ngram":
        return Speculator(NGramDrafter(n_max=2), gamma=3)
    return Speculator(DraftModelDrafter(truncated_draft(actor, 1)), gamma=3)


@pytest.mark.parametrize("setting", [*SETTINGS, CONTROL], ids=str)
def test_the_chi2_machinery(actor, setting):
    """The plain sampler passes against the exact distribution; the χ² survival function is right."""
    sf = lambda x, k: float(torch.special.gammaincc(torch.tensor(k / 2), torch.tensor(x / 2)))
    assert abs(sf(3.841, 1) - 0.05) < 1e-3 and abs(sf(18.307, 10) - 0.05) < 1e-3  # χ² tables
    params = params_for(setting)
    exact = exact_distribution(actor, params)
    assert len(exact) > 20 and max(exact.values()) < 0.5  # a distribution with room to go wrong
    assert chi2_pvalue(completions(actor, params), exact) > PASS_P


@pytest.mark.parametrize("setting", SETTINGS, ids=str)
@pytest.mark.parametrize("kind", ["ngram", "draft"])
def test_speculative_sequences_follow_the_plain_distribution(actor, kind, setting):
    params = params_for(setting, seed=3)
    spec = make_speculator(kind, actor)
    samples = completions(actor, params, spec)
    assert spec.stats.drafted > 1000 and 0 < spec.stats.accepted < spec.stats.drafted  # both branches exercised
    assert chi2_pvalue(samples, exact_distribution(actor, params)) > PASS_P


def _temperature_one(params):
    return SamplingParams(**{**params.__dict__, "temperature": 1.0})


@pytest.mark.parametrize("bug", ["p ignores temperature (compare)", "p ignores temperature", "q ignores temperature"])
def test_negative_controls_are_rejected(actor, monkeypatch, bug):
    """The same test, the same sample size, a verifier with a temperature bug: must fail."""
    if bug == "p ignores temperature (compare)":
        right = verify.accept_by_comparison
        monkeypatch.setattr(verify, "accept_by_comparison", lambda logits, d, n, params, *a: right(logits, d, n, _temperature_one(params), *a))
    elif bug == "p ignores temperature":
        right = verify.accept_by_rejection
        monkeypatch.setattr(verify, "accept_by_rejection", lambda logits, d, n, q, params, *a: right(logits, d, n, q, _temperature_one(params), *a))
    else:  # q at T = 1 is q_T^T renormalised: the drafts came from q_T, the test divides by the wrong q
        right = verify.accept_by_rejection
        untempered = lambda q, T: q.double().pow(T) / q.double().pow(T).sum(-1, keepdim=True)
        monkeypatch.setattr(verify, "accept_by_rejection",
                            lambda logits, d, n, q, params, *a: right(logits, d, n, untempered(q, params.temperature), params, *a))
    params = params_for(CONTROL, seed=3)
    spec = make_speculator("ngram" if "compare" in bug else "draft", actor)
    samples = completions(actor, params, spec)
    full_support = sum((V - 1) ** (k - 1) for k in range(1, MAX_NEW)) + (V - 1) ** (MAX_NEW - 1) * V  # EOS ends early
    assert len(exact_distribution(actor, params)) == full_support
    assert chi2_pvalue(samples, exact_distribution(actor, params)) < REJECT_P
