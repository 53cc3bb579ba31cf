"""bench/shapes.py: presets write loadable HF directories (ours and transformers) of the size they claim,
seeded; `fastrlhf bench make-model` writes one or refuses in one line."""

import torch

from fastrlhf import cli
from fastrlhf.bench import shapes
from fastrlhf.model.config import ModelConfig
from fastrlhf.model.hf_io import load_model_and_tokenizer
from fastrlhf.model.tokenizer import load_tokenizer
from fastrlhf.tasks.builtin_policy import builtin_policy_dir


def _hf_param_count(cfg: ModelConfig) -> int:
    from transformers import AutoConfig, AutoModelForCausalLM

    hf_cfg = AutoConfig.for_model(**cfg.to_hf_dict())
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(hf_cfg).num_parameters()


def test_23m_writes_a_dir_both_sides_load_with_about_23m_parameters(tmp_path):
    from transformers import AutoModelForCausalLM

    out = shapes.write_shape("23m", tmp_path / "m")
    ours, tok = load_model_and_tokenizer(out)
    n = sum(p.numel() for p in ours.parameters())
    assert abs(n - 23e6) / 23e6 < 0.15 and n == shapes.num_params("23m")
    hf = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    assert hf.num_parameters() == n
    ids = torch.tensor([tok.encode_prompt("47+815=")])
    with torch.no_grad():
        torch.testing.assert_close(ours(ids), hf(ids).logits, atol=1e-4, rtol=1e-4)
    # the tokenizer covers the model vocabulary; task prompts tokenize as with the built-in policy
    assert tok.vocab_size == ours.config.vocab_size == 2048
    assert tok.encode_prompt("47+815=") == load_tokenizer(builtin_policy_dir()).encode_prompt("47+815=")
    text = tok.decode([5, 1000, 2047])
    assert len(text) == 3 and text[0] == "1" and tok.encode(text) == [5, 1000, 2047]


def test_135m_has_smollm_proportions_and_about_135m_parameters():
    cfg = shapes.SHAPES["135m"].config
    assert (cfg.hidden_size, cfg.num_layers, cfg.num_heads, cfg.num_kv_heads, cfg.intermediate_size, cfg.vocab_size) == \
        (576, 30, 9, 3, 1536, 49152)
    assert cfg.tie_word_embeddings and cfg.head_dim == 64
    n = cfg.num_params()
    assert abs(n - 135e6) / 135e6 < 0.05
    assert n == _hf_param_count(cfg) == 134_515_008  # SmolLM-135M's count


def test_135m_tokenizer_covers_the_vocabulary(tmp_path):
    for name, data in shapes.tokenizer_files(49152).items():
        (tmp_path / name).write_bytes(data)
    tok = load_tokenizer(tmp_path)
    assert tok.vocab_size == 49152
    assert tok.encode_prompt("47+815=") == [1, 8, 11, 14, 12, 5, 9, 17]
    assert len(tok.decode([49151, 20, 3000])) == 3


def test_random_weights_are_seeded_and_leave_the_global_rng_alone():
    cfg = ModelConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_layers=2, num_heads=2, num_kv_heads=1,
                      head_dim=8, tie_word_embeddings=True)
    before = torch.get_rng_state()
    a, b, c = shapes.random_model(cfg, 0), shapes.random_model(cfg, 0), shapes.random_model(cfg, 1)
    assert torch.equal(torch.get_rng_state(), before)
    for (name, x), y, z in zip(a.state_dict().items(), b.state_dict().values(), c.state_dict().values()):
        assert torch.equal(x, y)
        if x.dim() >= 2:
            assert not torch.equal(x, z) and abs(x.std().item() - shapes.INIT_STD) < 0.01, name


def test_builtin_shape_is_the_shipped_policy(tmp_path):
    out = shapes.write_shape("builtin", tmp_path / "b")
    assert (out / "model.safetensors").read_bytes() == (builtin_policy_dir() / "model.safetensors").read_bytes()
    assert shapes.num_params("builtin") == 794_240


def test_make_model_cli_writes_once_then_refuses_a_non_empty_dir(tmp_path, capsys):
    out = tmp_path / "m"
    assert cli.main(["bench", "make-model", "--shape", "builtin", str(out)]) == 0
    assert f"wrote {out}: builtin (llama" in capsys.readouterr().out
    assert cli.main(["bench", "make-model", "--shape", "23m", str(out)]) == 2
    err = capsys.readouterr().err
    assert "not an empty directory" in err and len(err.strip().splitlines()) == 1
