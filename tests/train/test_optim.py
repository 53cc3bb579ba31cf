import math

import pytest
import torch

from fastrlhf.model.config import ModelConfig
from fastrlhf.model.decoder import CausalLM
from fastrlhf.train.optim import build_optimizer, build_scheduler, lr_multiplier, no_decay_names


pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.mark.parametrize("step, expected", [(0, 0.25), (1, 0.5), (3, 1.0), (4, 1.0), (9, 0.5), (14, 0.0), (20, 0.0)])
def test_linear_schedule_hand_values(step, expected):
    # warmup 4: (s+1)/4; then decay over 10 steps from s=4: 1 - (s-4)/10
    assert lr_multiplier(step, 4, 14, "linear") == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("step, expected", [(0, 0.5), (1, 1.0), (2, 1.0), (4, 0.5), (5, 0.5 * (1 + math.cos(math.pi * 0.75))), (6, 0.0)])
def test_cosine_schedule_hand_values(step, expected):
    # warmup 2, total 6: p = (s-2)/4; m = (1 + cos(pi p)) / 2
    assert lr_multiplier(step, 2, 6, "cosine") == pytest.approx(expected, abs=1e-12)


def test_none_and_min_ratio_and_no_warmup():
    assert lr_multiplier(0, 0, 10, "none") == 1.0
    assert lr_multiplier(7, 3, 10, "none") == 1.0
    assert lr_multiplier(0, 0, 10, "linear") == 1.0
    assert lr_multiplier(10, 0, 10, "cosine", min_ratio=0.1) == pytest.approx(0.1)
    assert lr_multiplier(5, 0, 10, "linear", min_ratio=0.2) == pytest.approx(0.6)
    with pytest.raises(ValueError):
        lr_multiplier(0, 0, 10, "exp")


def tiny_model(tied: bool = True) -> CausalLM:
    torch.manual_seed(0)
    return CausalLM(ModelConfig(vocab_size=20, hidden_size=16, intermediate_size=32, num_layers=1, num_heads=2,
                                num_kv_heads=2, head_dim=8, tie_word_embeddings=tied, attention_bias=True))


@pytest.mark.parametrize("tied", [True, False])
def test_optimizer_groups_exclude_norms_biases_embeddings(tied):
    model = tiny_model(tied)
    opt = build_optimizer(model, lr=1e-3, weight_decay=0.1)
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert set(no_decay["param_names"]) == {"model.embed_tokens.weight", "model.layers.0.input_layernorm.weight",
                                            "model.layers.0.post_attention_layernorm.weight", "model.norm.weight",
                                            "model.layers.0.self_attn.qkv_proj.bias"}
    assert ("lm_head.weight" in decay["param_names"]) == (not tied)
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))
    assert no_decay_names(model) == set(no_decay["param_names"])


def test_scheduler_applies_multiplier_each_step():
    model = tiny_model()
    opt = build_optimizer(model, lr=2.0)
    sched = build_scheduler(opt, warmup_steps=2, total_steps=6, decay="linear")
    seen = []
    for _ in range(6):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert seen == pytest.approx([1.0, 2.0, 2.0, 1.5, 1.0, 0.5])
