"""Our decoder vs transformers: same logits (fp32, ≤ 1e-4), save → HF load → same logits, bad files."""

import json

import pytest
import torch
from helpers import random_hf_model, tiny_model_dir

from fastrlhf.errors import UserError
from fastrlhf.model.hf_io import load_model, save_model

KINDS = [("llama", {}), ("llama", {"tie_word_embeddings": True}), ("llama3", {}),
         ("qwen2", {}), ("qwen2", {"tie_word_embeddings": True}), ("qwen3", {}),
         ("mistral", {}), ("llama", {"num_key_value_heads": 4})]


def _batch(seed=1, B=3, T=20, vocab=101):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (B, T), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 13:] = 0  # right padding in one row
    return ids, mask


@pytest.mark.parametrize("kind,overrides", KINDS, ids=[f"{k}-{'-'.join(f'{a}={b}' for a, b in o.items())}" for k, o in KINDS])
def test_logits_match_transformers(tmp_path, kind, overrides):
    hf = random_hf_model(kind, **overrides)
    hf.save_pretrained(tmp_path / "m")
    ours = load_model(tmp_path / "m")
    ids, mask = _batch()
    with torch.no_grad():
        expected = hf(input_ids=ids, attention_mask=mask).logits
        got = ours(ids, mask)
    real = mask.bool()
    assert (expected - got)[real].abs().max().item() <= 1e-4
    assert expected[real].abs().max() > 0.1  # non-degenerate logits


def test_parity_check_is_sensitive(tmp_path):
    """A one-element change in a norm weight must break parity (the comparison is not vacuous)."""
    hf = random_hf_model("qwen3")
    hf.save_pretrained(tmp_path / "m")
    ours = load_model(tmp_path / "m")
    with torch.no_grad():
        ours.model.layers[1].self_attn.k_norm.weight[3] += 0.5
        ids, mask = _batch()
        diff = (hf(input_ids=ids, attention_mask=mask).logits - ours(ids, mask)).abs().max()
    assert diff > 1e-3


def test_sliding_window_matters_and_matches(tmp_path):
    """Mistral with window 6 on 20 tokens differs from full attention, and still matches HF."""
    ids, mask = _batch(T=20)
    ours_w = load_model(tiny_model_dir(tmp_path, "mistral", sliding_window=6))
    ours_full = load_model(tiny_model_dir(tmp_path / "full", "mistral", sliding_window=None))
    with torch.no_grad():
        assert (ours_w(ids) - ours_full(ids))[:, 10:].abs().max() > 1e-3
        assert (ours_w(ids) - ours_full(ids))[:, :6].abs().max() < 1e-5


@pytest.mark.parametrize("kind", ["llama", "qwen2", "qwen3", "mistral"])
def test_save_roundtrip_through_transformers(tmp_path, kind):
    from transformers import AutoModelForCausalLM

    ours = load_model(tiny_model_dir(tmp_path, kind, tie_word_embeddings=(kind == "qwen2")))
    save_model(ours, tmp_path / "exported")
    back = AutoModelForCausalLM.from_pretrained(tmp_path / "exported").eval()
    ids, mask = _batch()
    with torch.no_grad():
        assert (back(input_ids=ids, attention_mask=mask).logits - ours(ids, mask))[mask.bool()].abs().max() <= 1e-5
    again = load_model(tmp_path / "exported")
    assert all(torch.equal(a, b) for a, b in zip(ours.state_dict().values(), again.state_dict().values()))


def test_sharded_checkpoint_loads(tmp_path):
    hf = random_hf_model("llama")
    hf.save_pretrained(tmp_path / "sharded", max_shard_size="40KB")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").exists()
    ours = load_model(tmp_path / "sharded")
    ids, mask = _batch()
    with torch.no_grad():
        assert (hf(input_ids=ids).logits - ours(ids)).abs().max() <= 1e-4


def test_score_head_roundtrip(tmp_path):
    from transformers import AutoModelForSequenceClassification

    from fastrlhf.model.heads import with_score_head

    ours = load_model(tiny_model_dir(tmp_path, "llama", pad_token_id=0))

    rm = with_score_head(ours, seed=3)
    save_model(rm, tmp_path / "rm")
    hf = AutoModelForSequenceClassification.from_pretrained(tmp_path / "rm").eval()
    ids = torch.randint(1, 101, (2, 9))  # no pad (id 0) inside
    with torch.no_grad():
        ours_last = rm.values(rm.forward_hidden(ids))[:, -1]
        assert (hf(input_ids=ids).logits[:, 0] - ours_last).abs().max() <= 1e-5


def _write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_bad_checkpoints_are_one_line_errors(tmp_path):
    good = tiny_model_dir(tmp_path, "llama")
    cfg = json.loads((good / "config.json").read_text())
    cases = {
        "notjson": ("{not json", "not valid JSON"),
        "gpt2": (json.dumps({**cfg, "model_type": "gpt2"}), "model_type 'gpt2' is not supported"),
        "nohidden": (json.dumps({k: v for k, v in cfg.items() if k != "hidden_size"}), "missing required key 'hidden_size'"),
        "gelu": (json.dumps({**cfg, "hidden_act": "gelu"}), "hidden_act"),
        "yarn": (json.dumps({**cfg, "rope_parameters": {"rope_type": "yarn", "factor": 2.0}}), "rope type 'yarn'"),
    }
    for name, (text, message) in cases.items():
        _write(tmp_path / name / "config.json", text)
        with pytest.raises(UserError, match=message) as err:
            if name in ("gpt2", "nohidden", "gelu", "yarn"):
                (tmp_path / name / "model.safetensors").write_bytes((good / "model.safetensors").read_bytes())
            load_model(tmp_path / name)
        assert "\n" not in str(err.value) and "config.json" in str(err.value)
    # wrong shape: config says hidden 32, weights are 64
    _write(tmp_path / "shape" / "config.json", json.dumps({**cfg, "intermediate_size": 50}))
    (tmp_path / "shape" / "model.safetensors").write_bytes((good / "model.safetensors").read_bytes())
    with pytest.raises(UserError, match="has shape"):
        load_model(tmp_path / "shape")
    # truncated weights file
    _write(tmp_path / "trunc" / "config.json", json.dumps(cfg))
    (tmp_path / "trunc" / "model.safetensors").write_bytes((good / "model.safetensors").read_bytes()[:500])
    with pytest.raises(UserError, match="cannot read safetensors"):
        load_model(tmp_path / "trunc")
    # pickle only
    _write(tmp_path / "pickle" / "config.json", json.dumps(cfg))
    (tmp_path / "pickle" / "pytorch_model.bin").write_bytes(b"x")
    with pytest.raises(UserError, match="safetensors only"):
        load_model(tmp_path / "pickle")
    with pytest.raises(UserError, match="nowhere: model directory does not exist"):
        load_model(tmp_path / "nowhere")
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(UserError, match="a_file: not a directory"):
        load_model(tmp_path / "a_file")


def test_failed_save_leaves_nothing(tmp_path, monkeypatch):
    ours = load_model(tiny_model_dir(tmp_path, "llama"))
    import fastrlhf.model.hf_io as hf_io

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(hf_io, "save_file", boom)
    with pytest.raises(OSError):
        save_model(ours, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".out")] == []
