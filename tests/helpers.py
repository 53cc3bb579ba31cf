"""Tiny random models for tests (no downloads): build an HF model from a config, save it, load ours."""

from __future__ import annotations

import torch

TINY = dict(vocab_size=101, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)


def hf_config(kind: str, **overrides):
    from transformers import LlamaConfig, MistralConfig, Qwen2Config, Qwen3Config

    base = {**TINY, **overrides}
    if kind == "llama":
        return LlamaConfig(**base)
    if kind == "llama3":
        return LlamaConfig(**base, rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                                 "high_freq_factor": 4.0, "original_max_position_embeddings": 16})
    if kind == "qwen2":
        return Qwen2Config(**base)
    if kind == "qwen3":
        return Qwen3Config(**{"head_dim": 32, **base})
    if kind == "mistral":
        return MistralConfig(**{"sliding_window": 6, **base})
    raise ValueError(kind)


def random_hf_model(kind: str, seed: int = 0, **overrides):
    """A random HF model whose norms and biases are perturbed away from their (trivial) init."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(hf_config(kind, **overrides)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or "bias" in name:
                p.add_(torch.randn_like(p) * 0.1)
    return model


def tiny_model_dir(tmp_path, kind: str = "llama", seed: int = 0, **overrides):
    model = random_hf_model(kind, seed, **overrides)
    path = tmp_path / f"{kind}-{seed}"
    model.save_pretrained(path)
    return path
