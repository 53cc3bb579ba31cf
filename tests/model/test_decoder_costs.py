"""Model spec: parameter count, FLOPs per token and KV bytes per token against hand counts."""

import pytest
import torch
from helpers import random_hf_model

from fastrlhf.errors import UserError
from fastrlhf.model.config import ModelConfig
from fastrlhf.model.decoder import CausalLM


def tiny_cfg(**kw):
    base = dict(vocab_size=10, hidden_size=8, intermediate_size=12, num_layers=2, num_heads=4,
                num_kv_heads=2, head_dim=2)
    return ModelConfig(**{**base, **kw})


def test_num_params_hand_count():
    # per layer: q 8·8=64, k 8·4=32, v 32, o 64, mlp 3·8·12=288, norms 16 → 496; ×2 = 992
    # embed 80 + final norm 8 + lm_head 80 = 168 → 1160
    assert tiny_cfg().num_params() == 1160
    assert tiny_cfg(tie_word_embeddings=True).num_params() == 1080
    # qwen2 bias: q 8 + k 4 + v 4 = 16 per layer → +32 ; qwen3 q/k norm 2·2 = 4 per layer → +8
    assert tiny_cfg(model_type="qwen2", attention_bias=True).num_params() == 1192
    assert tiny_cfg(model_type="qwen3", qk_norm=True).num_params() == 1168
    assert tiny_cfg(score_head=True).num_params() == 1168


@pytest.mark.parametrize("kind", ["llama", "qwen2", "qwen3", "mistral"])
def test_num_params_matches_real_modules(kind):
    hf = random_hf_model(kind)
    cfg = ModelConfig.from_hf_dict(hf.config.to_dict())
    assert cfg.num_params() == sum(p.numel() for p in CausalLM(cfg).parameters())
    assert cfg.num_params() == sum(p.numel() for p in hf.parameters())


def test_flops_and_kv_bytes_hand_count():
    cfg = tiny_cfg()
    # matmul params: per layer 2·8·8 (q,o) + 2·8·4 (k,v) + 3·8·12 = 128+64+288 = 480; ×2 = 960; + lm_head 80 = 1040
    assert cfg.matmul_params_per_token() == 1040
    # forward at context 5: 2·1040 + 4·L(2)·H(4)·h(2)·5 = 2080 + 320 = 2400
    assert cfg.flops_per_token(5) == 2400
    assert cfg.train_flops_per_token(5) == 7200
    # KV: 2 (k,v) · 2 layers · 2 kv heads · 2 dims · 4 bytes = 64
    assert cfg.kv_bytes_per_token(4) == 64
    assert cfg.kv_bytes_per_token(2) == 32


def test_flops_match_profiler_count():
    """torch's FLOP counter on a real forward agrees with both terms of the formula.

    For a short sequence the decoder computes attention as dense matmuls over the full T×T score
    matrix (masked entries included), so the counter sees 4·L·H·h·T² where the formula charges only
    the causal, useful 4·L·H·h·Σ_{c≤T} c."""
    from torch.utils.flop_counter import FlopCounterMode

    from fastrlhf.model.decoder import SHORT_QUERY

    cfg = tiny_cfg(vocab_size=50, hidden_size=32, intermediate_size=48, num_heads=4, num_kv_heads=2, head_dim=8)
    model = CausalLM(cfg).eval()
    T = 7
    assert T <= SHORT_QUERY
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.zeros(1, T, dtype=torch.long))
    per_context = 4 * cfg.num_layers * cfg.num_heads * cfg.head_dim
    linear_part = sum(cfg.flops_per_token(c) for c in range(1, T + 1)) - per_context * sum(range(1, T + 1))
    assert linear_part == T * 2 * cfg.matmul_params_per_token()
    assert counter.get_total_flops() == linear_part + per_context * T * T


def test_bad_shapes_rejected():
    with pytest.raises(UserError, match="multiple of num_key_value_heads"):
        tiny_cfg(num_kv_heads=3)
    with pytest.raises(UserError, match="not supported"):
        ModelConfig.from_hf_dict({"model_type": "gpt_neox"})
