"""The fused, chunked LM-head log-prob (`train/lm_head_logprobs.py`) against full-logits autograd."""

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from fastrlhf.rollout.sampler import SamplingParams, sampling_logprobs, token_logprobs
from fastrlhf.train.lm_head_logprobs import CHUNK_ELEMENTS, default_chunk_rows, token_logprobs_from_hidden

R, D, V = 53, 24, 1000  # chunk_rows=7 → 8 chunks, the last one ragged (4 rows)

PARAMS = {
    "t1": SamplingParams(temperature=1.0),
    "t0.7": SamplingParams(temperature=0.7),
    "greedy": SamplingParams(temperature=0.0),
    "top_k": SamplingParams(temperature=0.8, top_k=50),
    "top_p": SamplingParams(temperature=1.0, top_p=0.9),
    "top_k_top_p": SamplingParams(temperature=0.9, top_k=200, top_p=0.8),
}


def inputs(params, seed=0, dtype=torch.float32):
    """Random hidden / weight leaves; tokens: most drawn from the sampling distribution, some uniform
    (with filtering these usually fall outside the support, log π = −inf)."""
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(R, D, generator=g).mul_(0.8).to(dtype).requires_grad_()
    weight = torch.nn.Parameter(torch.randn(V, D, generator=g).mul_(0.5).to(dtype))
    with torch.no_grad():
        probs = sampling_logprobs(F.linear(hidden, weight), params).exp()
    tokens = torch.multinomial(probs, 1, generator=g).squeeze(-1)
    uniform = torch.randint(0, V, (R,), generator=g)
    tokens = torch.where(torch.rand(R, generator=g) < 0.2, uniform, tokens)
    upstream = torch.randn(R, generator=g)
    return hidden, weight, tokens, upstream


def reference(hidden, weight, tokens, params, upstream):
    """Full logits + autograd; rows with log π = −inf get upstream 0 (as the trainer does)."""
    h, w = hidden.detach().clone().requires_grad_(), weight.detach().clone().requires_grad_()
    logp = token_logprobs(F.linear(h, w), tokens, params)
    up = torch.where(torch.isinf(logp.detach()), torch.zeros_like(upstream), upstream)
    (logp * up).sum().backward()
    return logp.detach(), h.grad, w.grad, up


# fp64 leaves: the chunked matmul rounds to the same fp32 logits as the full one, so only the softmax /
# filter / gradient code is compared, at 1e-6. fp32 leaves: BLAS blocks a 7-row matmul differently from
# a 53-row one, so the logits themselves already differ by a few ulp (≈1e-6 at |z| ≈ 5): 5e-6 there.
# Gradients (the softmax is fp32 either way): 1e-6 relative in norm, and elementwise close.
LOGP_TOLERANCE = {torch.float64: 1e-6, torch.float32: 5e-6}


def assert_grad_close(got, want):
    assert float((got - want).norm() / want.norm()) <= 1e-6
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
@pytest.mark.parametrize("name", list(PARAMS))
def test_logprobs_and_grads_match_full_logits(name, dtype):
    params = PARAMS[name]
    hidden, weight, tokens, upstream = inputs(params, dtype=dtype)
    ref_logp, ref_gh, ref_gw, up = reference(hidden, weight, tokens, params, upstream.to(dtype))

    logp, entropy = token_logprobs_from_hidden(hidden, weight, tokens, params, chunk_rows=7)
    assert logp.dtype == entropy.dtype == torch.float32 and not entropy.requires_grad
    assert torch.equal(torch.isinf(logp), torch.isinf(ref_logp))
    finite = torch.isfinite(ref_logp)
    assert finite.sum() > R // 2
    if params.top_k or params.top_p < 1:
        assert (~finite).any()  # some tokens really are outside the support
    assert (logp[finite] - ref_logp[finite]).abs().max() <= LOGP_TOLERANCE[dtype]

    (logp.masked_fill(~finite, 0.0) * up).sum().backward()
    assert hidden.grad.dtype == weight.grad.dtype == dtype
    assert_grad_close(hidden.grad, ref_gh)
    assert_grad_close(weight.grad, ref_gw)

    lp = sampling_logprobs(F.linear(hidden, weight).detach(), params)  # the trainer's entropy statistic
    expected = -(lp.exp() * torch.where(torch.isinf(lp), torch.zeros_like(lp), lp)).sum(-1)
    torch.testing.assert_close(entropy, expected, rtol=0, atol=1e-5)


def test_chunking_does_not_change_the_result():
    params = PARAMS["top_k_top_p"]
    hidden, weight, tokens, _ = inputs(params, seed=1)
    a = token_logprobs_from_hidden(hidden, weight, tokens, params, chunk_rows=7)
    b = token_logprobs_from_hidden(hidden, weight, tokens, params, chunk_rows=1000)
    c = token_logprobs_from_hidden(hidden, weight, tokens, params)  # default: one chunk here
    for x, y in [(a, b), (b, c)]:
        torch.testing.assert_close(x[0], y[0], rtol=0, atol=1e-6)
        torch.testing.assert_close(x[1], y[1], rtol=0, atol=1e-5)


def test_outside_support_and_zero_upstream_rows_get_zero_gradient():
    params = PARAMS["top_k"]
    hidden, weight, tokens, _ = inputs(params, seed=2)
    logp, _ = token_logprobs_from_hidden(hidden, weight, tokens, params, chunk_rows=7)
    outside = torch.isinf(logp.detach())
    assert outside.any() and (~outside).any()
    # upstream 1 on the −inf rows, 0 elsewhere: every gradient is exactly 0, nothing NaN
    torch.autograd.backward(logp, outside.float())
    assert torch.equal(hidden.grad, torch.zeros_like(hidden)) and torch.equal(weight.grad, torch.zeros_like(weight))


def test_empty_input():
    params = PARAMS["t1"]
    hidden = torch.zeros(0, D, requires_grad=True)
    weight = torch.nn.Parameter(torch.randn(V, D))
    logp, entropy = token_logprobs_from_hidden(hidden, weight, torch.zeros(0, dtype=torch.long), params)
    assert logp.shape == entropy.shape == (0,) and logp.dtype == torch.float32
    logp.sum().backward()
    assert hidden.grad.shape == (0, D)
    assert torch.equal(weight.grad, torch.zeros_like(weight))


def test_bf16_compute_under_autocast_is_close_to_fp32():
    params = PARAMS["t0.7"]
    hidden, weight, tokens, upstream = inputs(params, seed=3)
    ref_logp, ref_gh, ref_gw, _ = reference(hidden, weight, tokens, params, upstream)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logp, entropy = token_logprobs_from_hidden(hidden, weight, tokens, params,
                                                   compute_dtype=torch.bfloat16, chunk_rows=7)
        (logp * upstream).sum().backward()
    assert logp.dtype == entropy.dtype == torch.float32
    assert (logp - ref_logp).abs().max() <= 5e-2
    assert hidden.grad.dtype == weight.grad.dtype == torch.float32
    for got, want in [(hidden.grad, ref_gh), (weight.grad, ref_gw)]:
        assert torch.isfinite(got).all()
        assert (got - want).norm() <= 5e-2 * want.norm()


def test_autocast_does_not_lower_an_fp32_compute_dtype():
    params = PARAMS["t1"]
    hidden, weight, tokens, _ = inputs(params, seed=3)
    ref_logp = reference(hidden, weight, tokens, params, torch.zeros(R))[0]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logp, _ = token_logprobs_from_hidden(hidden, weight, tokens, params, chunk_rows=7)  # compute_dtype: fp32
    assert (logp.detach() - ref_logp).abs().max() <= 5e-6


def test_bf16_leaves_get_bf16_grads():
    params = PARAMS["top_p"]
    hidden, weight, tokens, upstream = inputs(params, seed=4, dtype=torch.bfloat16)
    logp, _ = token_logprobs_from_hidden(hidden, weight, tokens, params, chunk_rows=7)
    finite = torch.isfinite(logp.detach())
    (logp.masked_fill(~finite, 0.0) * upstream).sum().backward()
    assert hidden.grad.dtype == weight.grad.dtype == torch.bfloat16
    assert torch.isfinite(hidden.grad).all() and torch.isfinite(weight.grad).all()


class _LargestTensor(TorchDispatchMode):
    """Records the largest number of elements of any tensor an op produces."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


def test_memory_is_bounded_by_one_chunk_at_a_large_vocabulary():
    rows, vocab, d = 2000, 50_000, 64
    chunk = default_chunk_rows(vocab)
    assert chunk * vocab <= CHUNK_ELEMENTS <= 8 * 2 ** 20 and chunk < rows
    assert default_chunk_rows(150_000) * 150_000 <= CHUNK_ELEMENTS and default_chunk_rows(10 ** 9) == 1
    g = torch.Generator().manual_seed(5)
    hidden = torch.randn(rows, d, generator=g).requires_grad_()
    weight = torch.nn.Parameter(torch.randn(vocab, d, generator=g) * 0.1)
    tokens = torch.randint(0, vocab, (rows,), generator=g)
    with _LargestTensor() as mode:
        logp, entropy = token_logprobs_from_hidden(hidden, weight, tokens, SamplingParams())
        logp.sum().backward()
    assert mode.largest <= max(chunk * vocab, vocab * d)  # never the full [R, V] = 100M logits
    assert torch.isfinite(logp).all() and torch.isfinite(entropy).all()
    assert torch.isfinite(hidden.grad).all() and torch.isfinite(weight.grad).all()
    # spot-check a few rows against full logits on those rows only
    with torch.no_grad():
        ref = token_logprobs(F.linear(hidden[:3], weight), tokens[:3], SamplingParams())
    torch.testing.assert_close(logp[:3].detach(), ref, rtol=0, atol=1e-5)
