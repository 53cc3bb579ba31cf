"""The decode hot path: fp32 sampling, host syncs per step, causal prefill, per-call KV cache,
the static step's traceability (CUDA graphs need it graph-break free), bf16 models.

No GPU here: host syncs are counted as the Python-level tensor → host conversions (`item`,
`tolist`, `bool`/`int`/`float`/`index` of a tensor, `numpy`, `cpu`) and host tensors built with
`torch.tensor`, each attributed to the file and function that asked for it."""

import contextlib
import copy
import os
import sys
from collections import Counter

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from fastrlhf.model.config import ModelConfig
from fastrlhf.model.decoder import SHORT_QUERY, CausalLM
from fastrlhf.rollout.engine import RolloutEngine, default_compiler
from fastrlhf.rollout.sampler import SamplingParams, sample, token_logprobs, uniforms
from fastrlhf.rollout.speculative.ngram import NGramDrafter
from fastrlhf.rollout.speculative.verify import Speculator

PROMPTS = [[1, 2, 3], [4, 5], [6, 7, 8, 9, 1, 2, 3], [3] * 9, [9], [5, 6, 7, 8]]
CONVERSIONS = ("item", "tolist", "__bool__", "__int__", "__float__", "__index__", "numpy", "cpu")


def tiny(windows=(None, None), vocab=31, seed=0) -> CausalLM:
    torch.manual_seed(seed)
    cfg = ModelConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_layers=len(windows), num_heads=4,
                      num_kv_heads=2, head_dim=8, max_position_embeddings=96, sliding_window=list(windows))
    return CausalLM(cfg).eval()


@pytest.fixture(scope="module")
def model(single_thread):
    return tiny()


class SyncLog:
    """Records (file, function, what) for every tensor → host conversion and `torch.tensor` call
    while `active`; patched on `torch.Tensor` for the whole `with` block."""

    def __init__(self):
        self.depth, self.events = 0, []

    @contextlib.contextmanager
    def installed(self):
        saved = {name: getattr(torch.Tensor, name) for name in CONVERSIONS}
        saved_tensor = torch.tensor

        def wrap(name, fn):
            def recorded(*args, **kwargs):
                if self.depth:
                    frame = sys._getframe(1)
                    self.events.append((os.path.basename(frame.f_code.co_filename), frame.f_code.co_name, name))
                return fn(*args, **kwargs)
            return recorded

        try:
            for name, fn in saved.items():
                setattr(torch.Tensor, name, wrap(name, fn))
            torch.tensor = wrap("torch.tensor", saved_tensor)
            yield self
        finally:
            for name, fn in saved.items():
                setattr(torch.Tensor, name, fn)
            torch.tensor = saved_tensor

    @contextlib.contextmanager
    def recording(self):
        start = len(self.events)
        self.depth += 1
        try:
            yield lambda: self.events[start:]
        finally:
            self.depth -= 1


class WatchedEngine(RolloutEngine):
    """Records the conversions of every decode step, with whether it finished a sequence and
    whether its running set was the previous step's."""

    def __init__(self, *args, log: SyncLog, **kwargs):
        super().__init__(*args, **kwargs)
        self.log, self.steps, self._previous = log, [], None

    def decode_one(self, active):
        finished = len(self.finished)
        with self.log.recording() as events:
            super().decode_one(active)
        self.steps.append(dict(events=events(), finished=len(self.finished) > finished, same_set=active == self._previous))
        self._previous = list(active)


def steady_steps(engine):
    return [s for s in engine.steps if not s["finished"] and s["same_set"]]


# ---------------------------------------------------------------------- 1. fp32 sampling
class DtypeLog(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.outputs = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(t, torch.Tensor):
                self.outputs[t.dtype] += 1
        return out


@pytest.mark.parametrize("setting", [dict(temperature=1.0), dict(temperature=0.7, top_k=5, top_p=0.9)], ids=str)
def test_sampling_math_is_fp32(setting):
    logits = torch.randn(6, 40)
    u = uniforms(torch.arange(6), torch.zeros(6, dtype=torch.long)).float()  # the uniforms' own f64 math is not ours here
    with DtypeLog() as log:
        tokens, logprobs = sample(logits, SamplingParams(**setting), u)
    assert torch.float64 not in log.outputs and log.outputs[torch.float32] > 0
    assert logprobs.dtype == torch.float32 and torch.isfinite(logprobs).all()


def test_end_of_cdf_rounding_goes_to_the_last_kept_token():
    """u·total ≥ cdf[-1] (u = 1 in fp32: a float64 uniform within 2⁻²⁵ of 1 rounds to it) picks the
    last token with positive probability — not a filtered one, not the argmax."""
    probs = torch.tensor([[0.05, 0.5, 0.4, 0.05]])  # top-k 2 keeps tokens 1 and 2; token 3 (last) is filtered
    logits = probs.log()
    params = SamplingParams(top_k=2)
    for u in (1.0, 1 - 2.0 ** -30, 1 - 2.0 ** -53):
        tokens, logprobs = sample(logits, params, torch.tensor([u], dtype=torch.float64))
        assert tokens.item() == 2 and torch.isclose(logprobs, torch.tensor([0.4 / 0.9]).log()).all()
    tokens, _ = sample(logits, params, torch.tensor([1e-9], dtype=torch.float64))
    assert tokens.item() == 1
    # unfiltered: the last vocabulary token is the last kept one
    tokens, _ = sample(logits, SamplingParams(), torch.tensor([1.0], dtype=torch.float64))
    assert tokens.item() == 3


def test_sampling_bf16_logits_in_fp32():
    logits = torch.randn(64, 50)
    u = uniforms(torch.arange(64), torch.zeros(64, dtype=torch.long))
    params = SamplingParams(temperature=0.8, top_p=0.95)
    tokens, logprobs = sample(logits.bfloat16(), params, u)
    want = token_logprobs(logits.bfloat16().float(), tokens, params)
    assert logprobs.dtype == torch.float32 and torch.equal(logprobs, want)


# ---------------------------------------------------------------------- 2. host syncs per step
@pytest.mark.parametrize("setting", [dict(temperature=0), dict(temperature=1.0, top_p=0.9)], ids=str)
def test_plain_decode_step_syncs_only_for_the_stop_check(model, setting):
    log = SyncLog()
    engine = WatchedEngine(model, num_slots=4, log=log)
    params = SamplingParams(max_new_tokens=12, n=2, seed=3, stop_token_ids=(7,), **setting)
    with log.installed():
        engine.generate(PROMPTS, params)
    steady = steady_steps(engine)
    assert len(steady) > 5
    for step in steady:
        ours = [e for e in step["events"] if e[0] == "engine.py"]
        assert ours == [("engine.py", "_commit", "__bool__")], step["events"]
        # nothing else of the rollout package (sampler, cache views) converts or builds host tensors
        assert all(e[0] in ("engine.py", "decoder.py") for e in step["events"]), step["events"]
        assert not [e for e in step["events"] if e[2] == "torch.tensor"]


def test_plain_decode_step_model_forward_has_no_sync(model):
    log = SyncLog()
    engine = WatchedEngine(model, num_slots=4, log=log)
    with log.installed():
        engine.generate(PROMPTS, SamplingParams(max_new_tokens=8, n=2, seed=3))
    for step in steady_steps(engine):
        assert [e for e in step["events"] if e[0] != "engine.py"] == []


def test_static_step_has_no_sync_and_no_host_tensor(model):
    """Compile mode's all-slots step, run eagerly as it would be traced (`is_compiling()` true, as
    inside a graph): no conversion, no host tensor at all; and the step around it syncs only for
    the stop check."""
    log, inside = SyncLog(), []

    def traced_like(step):
        def run(*args):
            saved = torch.compiler.is_compiling
            torch.compiler.is_compiling = lambda: True
            try:
                with log.recording() as events:
                    out = step(*args)
                inside.append(events())
                return out
            finally:
                torch.compiler.is_compiling = saved
        return run

    engine = WatchedEngine(model, num_slots=3, compile=True, compiler=traced_like, log=log)
    with log.installed():
        engine.generate(PROMPTS, SamplingParams(max_new_tokens=10, n=2, seed=1, stop_token_ids=(7,)))
    assert len(inside) > 5 and all(events == [] for events in inside)
    steady = steady_steps(engine)
    assert steady and all(s["events"] == [("engine.py", "_commit", "__bool__")] for s in steady)


def test_static_step_traces_as_one_graph_and_compiles_once(model):
    """fullgraph=True fails on any graph break (a host sync or data-dependent Python inside the
    step) — what CUDA-graph capture needs. The cache is kept between calls in compile mode and
    re-used by a smaller call, so the step compiles once; `release()` frees it."""
    compiles = []

    def backend(gm, example_inputs):
        compiles.append(gm)
        return gm.forward

    torch._dynamo.reset()
    compiler = lambda fn: torch.compile(fn, backend=backend, fullgraph=True, dynamic=False)
    engine = RolloutEngine(model, num_slots=3, compile=True, compiler=compiler)
    plain = RolloutEngine(model, num_slots=3)
    params = SamplingParams(max_new_tokens=8, n=2, seed=2)
    first = engine.generate(PROMPTS, params)
    cache = engine.cache
    second = engine.generate(PROMPTS[:2], SamplingParams(max_new_tokens=4, seed=5))
    assert engine.cache is cache and len(compiles) == 1
    for a, b in zip(first, plain.generate(PROMPTS, params)):
        assert a.token_ids == b.token_ids and (a.logprobs - b.logprobs).abs().max() <= 1e-5
    assert [s.token_ids for s in second] == [s.token_ids for s in plain.generate(PROMPTS[:2], SamplingParams(max_new_tokens=4, seed=5))]
    engine.release()
    assert engine.cache is None
    torch._dynamo.reset()


def test_speculative_verify_syncs_at_most_once_for_the_lengths(model):
    """verify_forward's span comes from the host lengths: after a speculator's `append`s (device
    slots) they are re-copied once; nothing else in the verify forward converts."""
    log = SyncLog()

    class Watched(RolloutEngine):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.calls = []

        def verify_forward(self, slots, fed, contiguous):
            with log.recording() as events:
                out = super().verify_forward(slots, fed, contiguous)
            self.calls.append([e for e in events() if e[0] != "decoder.py"])
            return out

    params = SamplingParams(max_new_tokens=16, n=3, seed=4, temperature=0)
    engine = Watched(model, num_slots=4, speculator=Speculator(NGramDrafter(n_max=3), gamma=3))
    with log.installed():
        fast = engine.generate(PROMPTS, params)
    assert len(engine.calls) > 3
    assert all(c in ([], [("engine.py", "_host_lengths", "tolist")]) for c in engine.calls), engine.calls
    assert [s.token_ids for s in fast] == [s.token_ids for s in RolloutEngine(model, num_slots=4).generate(PROMPTS, params)]


def test_default_compiler_uses_cuda_graphs_on_cuda(monkeypatch):
    seen = []
    monkeypatch.setattr(torch, "compile", lambda fn, **kwargs: seen.append(kwargs) or fn)
    default_compiler(torch.device("cuda"))(len)
    default_compiler(torch.device("cpu"))(len)
    assert seen == [dict(mode="reduce-overhead", dynamic=False), dict(dynamic=False)]


# ---------------------------------------------------------------------- 3. causal prefill
@pytest.mark.parametrize("windows", [(None, None), (None, 6)], ids=["full", "window6"])
def test_causal_prefill_matches_explicit_masks(windows):
    """Prompts longer than SHORT_QUERY take SDPA's is_causal path, short ones the matmul path, in
    one padded batch: the first token's log-prob equals an explicit-mask forward of the prompt."""
    m = tiny(windows, seed=1)
    prompts = [list(range(1, 2 + SHORT_QUERY + 8)), [4, 5], [3] * (SHORT_QUERY + 3), [9]]
    params = SamplingParams(temperature=0.9, max_new_tokens=3, seed=6)
    out = RolloutEngine(m, num_slots=4).generate(prompts, params)
    for seq in out:
        full = seq.prompt_ids + seq.token_ids
        ids = torch.tensor([full])
        positions = torch.arange(len(full))[None]
        with torch.no_grad():
            hidden = m.hidden_states(ids, positions, m.masks_for(positions, positions, torch.ones_like(ids, dtype=torch.bool)))
            logits = m.logits(hidden)[0, seq.prompt_len - 1 : -1]
        want = token_logprobs(logits, torch.tensor(seq.token_ids), params)
        assert (seq.logprobs - want).abs().max() <= 1e-5


# ---------------------------------------------------------------------- 4. per-call KV cache
def test_cache_is_sized_per_call_and_released(model):
    engine = RolloutEngine(model, num_slots=16)
    sizes = []
    engine.generate(PROMPTS[:3], SamplingParams(max_new_tokens=5), on_step=lambda *_: sizes.append(engine.cache_size()))
    assert set(sizes) == {(3, 7 + 5)} and engine.cache is None
    engine.generate(PROMPTS, SamplingParams(max_new_tokens=4, n=4), on_step=lambda *_: sizes.append(engine.cache_size()))
    assert sizes[-1] == (16, 9 + 4) and engine.cache is None
    engine.start(PROMPTS[:1], SamplingParams(max_new_tokens=2))
    assert engine.cache_size() == (1, 3 + 2)
    engine.release()
    assert engine.cache is None


def test_compile_mode_keeps_a_big_enough_cache(model):
    engine = RolloutEngine(model, num_slots=4, compile=True, compiler=lambda fn: fn)
    engine.generate(PROMPTS, SamplingParams(max_new_tokens=6))
    cache = engine.cache
    assert (cache.num_slots, cache.max_len) == (4, 9 + 6)
    engine.generate(PROMPTS[:1], SamplingParams(max_new_tokens=2))
    assert engine.cache is cache  # smaller call: re-used (one compiled shape)
    engine.generate(PROMPTS[:1], SamplingParams(max_new_tokens=20))
    assert engine.cache is not cache and (engine.cache.num_slots, engine.cache.max_len) == (4, 3 + 20)


def test_cache_released_when_generate_fails(model):
    engine = RolloutEngine(model, num_slots=4)

    def boom(done, total):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        engine.generate(PROMPTS, SamplingParams(max_new_tokens=4), on_step=boom)
    assert engine.cache is None


# ---------------------------------------------------------------------- 6. bf16 models
@pytest.mark.parametrize("compile", [False, True], ids=["eager", "static"])
def test_bf16_copy_generates_deterministically(model, compile):
    low = copy.deepcopy(model).to(torch.bfloat16)
    params = SamplingParams(temperature=1.0, top_p=0.95, max_new_tokens=10, n=2, seed=8, stop_token_ids=(7,))

    def run():
        engine = RolloutEngine(low, num_slots=3, compile=compile, compiler=lambda fn: fn)
        out = engine.generate(PROMPTS, params)
        return engine, out

    engine, a = run()
    _, b = run()
    assert engine.dtype == torch.bfloat16
    assert [s.token_ids for s in a] == [s.token_ids for s in b]
    for x, y in zip(a, b):
        assert x.logprobs.dtype == torch.float32 and torch.equal(x.logprobs, y.logprobs)
        assert torch.isfinite(x.logprobs).all() and (x.logprobs <= 0).all()
    assert len({tuple(s.token_ids) for s in a}) > 1


def test_bf16_cache_dtype(model):
    low = copy.deepcopy(model).to(torch.bfloat16)
    engine = RolloutEngine(low, num_slots=2)
    engine.start(PROMPTS[:1], SamplingParams(max_new_tokens=2))
    assert engine.cache.k[0].dtype == torch.bfloat16
    engine.release()

