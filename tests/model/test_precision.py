"""model.dtype: resolution (auto's CPU measurement, cached), the rollout copy, fp16 loss scaling."""

import json
import math

import pytest
import torch

from fastrlhf.errors import UserError
from fastrlhf.model import precision as prec
from fastrlhf.model.config import ModelConfig
from fastrlhf.model.decoder import CausalLM
from fastrlhf.model.precision import AUTO_BF16_MIN_PARAMS, Precision, RolloutCopy, resolve_precision
from fastrlhf.updates import optimizer_step


def tiny():
    torch.manual_seed(0)
    return CausalLM(ModelConfig(vocab_size=50, hidden_size=16, intermediate_size=32, num_layers=1, num_heads=2,
                                num_kv_heads=1, head_dim=8, max_position_embeddings=32))


def test_explicit_choices_and_a_bad_one():
    cpu = torch.device("cpu")
    assert resolve_precision("fp32", cpu, 1).dtype == torch.float32
    assert resolve_precision("bf16", cpu, 1).dtype == torch.bfloat16
    assert resolve_precision("fp16", cpu, 1).scaler is not None
    assert resolve_precision("bf16", cpu, 1).scaler is None
    with pytest.raises(UserError, match="model.dtype must be one of auto, fp32, bf16, fp16"):
        resolve_precision("float8", cpu, 1)


def test_auto_on_cpu_keeps_small_models_fp32_and_measures_once(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    calls = []
    monkeypatch.setattr(prec, "_matmul_seconds", lambda dtype: calls.append(dtype) or (2.0 if dtype == torch.float32 else 1.0))
    cpu = torch.device("cpu")
    assert resolve_precision("auto", cpu, AUTO_BF16_MIN_PARAMS - 1).dtype == torch.float32
    assert calls == []  # small model: not even measured
    assert resolve_precision("auto", cpu, AUTO_BF16_MIN_PARAMS).dtype == torch.bfloat16
    assert resolve_precision("auto", cpu, AUTO_BF16_MIN_PARAMS).dtype == torch.bfloat16
    assert len(calls) == 2  # fp32 and bf16 timed once, then read from the cache
    cached = json.loads((tmp_path / "fastrlhf" / "cpu_bf16.json").read_text())
    assert list(cached.values())[0]["bf16_faster"] is True


def test_auto_stays_fp32_where_bf16_is_slow(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(prec, "_matmul_seconds", lambda dtype: 1.0 if dtype == torch.float32 else 3.0)  # emulated bf16
    assert resolve_precision("auto", torch.device("cpu"), 10 ** 9).dtype == torch.float32


def test_rollout_copy_follows_the_master_weights():
    master = tiny()
    copy = RolloutCopy(master, torch.bfloat16)
    assert copy.model is not master and next(copy.model.parameters()).dtype == torch.bfloat16
    with torch.no_grad():
        for p in master.parameters():
            p.add_(1.0)
    copy.refresh()
    for a, b in zip(master.parameters(), copy.model.parameters()):
        assert torch.equal(a.to(torch.bfloat16), b)
    assert RolloutCopy(master, torch.float32).model is master  # fp32: the engine decodes from the master


def test_autocast_trains_fp32_masters():
    model = tiny()
    p = Precision(torch.bfloat16, "cpu")
    with p.autocast():
        logits = model(torch.randint(0, 50, (2, 5)))
    assert logits.dtype == torch.bfloat16
    p.backward(logits.float().logsumexp(-1).mean())
    assert all(q.grad is not None and q.grad.dtype == torch.float32 for q in model.parameters() if q.requires_grad)


def test_fp16_overflow_skips_the_update_without_an_error():
    model = tiny()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    p = Precision(torch.float16, "cpu")
    before = [q.detach().clone() for q in model.parameters()]
    scale = p.scaler.get_scale()
    p.backward(model(torch.randint(0, 50, (2, 5))).float().mean() * 1e36)  # overflows once scaled
    assert math.isnan(optimizer_step(model, optimizer, None, 1.0, torch.tensor(1.0), scaler=p.scaler))
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert p.scaler.get_scale() < scale  # the loss scale backed off
