import json

import pytest

from fastrlhf.errors import UserError
from fastrlhf.plan.model_spec import PRESETS, from_hf_config, load_model_spec


def test_tiny_counts_by_hand(tiny):
    # attention 2*8*8 + 2*8*4 = 192, mlp 3*8*16 = 384 -> 576 matmul; + 2 norms of 8
    assert tiny.layer_matmul_params == 576
    assert tiny.layer_params == 592
    assert tiny.embed_params == 80 and tiny.head_params == 88  # head 80 + final norm 8
    assert tiny.n_params == 2 * 592 + 80 + 88 == 1352
    critic = tiny.as_critic()
    assert critic.head_params == 8 + 1 + 8 and critic.n_params == 1184 + 80 + 17


def test_tiny_flops_kv_activations(tiny):
    # 2 * (2 layers * 576 + head 80) + 4 * 2 layers * q_dim 8 * ctx 3
    assert tiny.flops_fwd_per_token(3) == 2 * 1232 + 192 == 2656
    assert tiny.flops_fwd_bwd_per_token(3) == 3 * 2656
    assert tiny.kv_bytes_per_token == 2 * 2 * 4 * 2 == 32
    # (4h + 2q + 2kv + 4i) * 2 bytes = (32 + 16 + 8 + 64) * 2
    assert tiny.act_bytes_per_token_layer == 240
    assert tiny.logit_bytes_per_token == 40 and tiny.as_critic().logit_bytes_per_token == 4


@pytest.mark.parametrize("name,params", [
    ("llama2-7b", 6_738_415_616), ("llama2-13b", 13_015_864_320),
    ("llama2-70b", 68_976_648_192), ("qwen2.5-0.5b", 494_032_768),
    ("qwen2.5-7b", 7_615_616_512), ("qwen2.5-72b", 72_706_203_648)])
def test_preset_parameter_counts_match_published_checkpoints(name, params):
    assert PRESETS[name].n_params == params


def test_llama2_7b_kv_and_flops():
    m = PRESETS["llama2-7b"]
    assert m.kv_bytes_per_token == 2 * 32 * 4096 * 2 == 524288  # 0.5 MiB per token
    # ~2N FLOPs per token without attention: N minus embedding
    assert m.flops_fwd_per_token(0) == 2 * (m.n_params - m.embed_params - 32 * 2 * 4096 - 4096)


def test_qwen_bias_and_tied():
    q = PRESETS["qwen2.5-0.5b"]
    assert q.tie_embeddings and q.qkv_bias and q.head_params == q.hidden


def test_from_hf_config_matches_preset(tmp_path):
    config = {"model_type": "llama", "num_hidden_layers": 32, "hidden_size": 4096,
              "intermediate_size": 11008, "num_attention_heads": 32,
              "num_key_value_heads": 32, "vocab_size": 32000}
    assert from_hf_config(config).n_params == PRESETS["llama2-7b"].n_params
    (tmp_path / "config.json").write_text(json.dumps(config))
    assert load_model_spec(str(tmp_path)).n_params == PRESETS["llama2-7b"].n_params
    with pytest.raises(UserError):
        from_hf_config({"hidden_size": 8})
    with pytest.raises(UserError):
        load_model_spec("no-such-model")
