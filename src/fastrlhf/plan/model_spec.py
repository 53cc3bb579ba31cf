"""Llama-family model specs: parameter counts, FLOPs, KV and activation bytes per token.

Architecture assumed (Llama 2, Qwen2/2.5): pre-norm decoder, RMSNorm (weight only), grouped-query
attention with `n_kv_heads`, optional q/k/v bias (Qwen2), SwiGLU MLP (gate, up, down), untied or
tied embeddings. A critic / reward model replaces the LM head by a scalar value head.

Formulas (h = hidden, i = intermediate, q = n_heads*head_dim, k = n_kv_heads*head_dim, V = vocab):
- params per layer  = h*q + 2*h*k + q*h  (+ q + 2k biases)  + 3*h*i  + 2*h (norms)
- params            = L * layer + V*h (embedding) + h (final norm) + head (V*h, 0 if tied; h+1 value)
- forward FLOPs per token attending to `ctx` keys (Kaplan et al. 2020, eq. 2.2, adapted):
  2 * (matmul params) + 4 * L * q * ctx, where matmul params = L * (layer minus norms and biases)
  + head matrix (the embedding lookup is free; tied heads still multiply). For a full causal pass
  over S tokens the mean ctx is (S+1)/2.
- forward+backward = 3 * forward (backward = 2x forward: grads w.r.t. inputs and weights).
- KV bytes per token = 2 (K and V) * L * k * dtype_bytes.
- activation bytes per token per layer (training, bf16, flash attention so no S^2 term, no
  recomputation; after Korthikanti et al. 2022 sec. 4.1 redone for SwiGLU + GQA). Saved tensors:
  attention-norm input h, its output h, q, k, v, attention output q, MLP-norm input h, its output h,
  gate i, up i, silu(gate) i, silu(gate)*up i -> (4h + 2q + 2k + 4i) * 2 bytes. Dropout masks and
  norm statistics are left out (Llama has no dropout; statistics are O(1) per token).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, replace

from fastrlhf.errors import UserError

BF16 = 2


@dataclass(frozen=True)
class ModelSpec:
    name: str
    n_layers: int
    hidden: int
    intermediate: int
    n_heads: int
    n_kv_heads: int
    vocab: int
    tie_embeddings: bool = False
    qkv_bias: bool = False
    value_head: bool = False  # critic / reward: scalar head instead of the LM head
    dtype_bytes: int = BF16

    @property
    def head_dim(self) -> int:
        return self.hidden // self.n_heads

    @property
    def q_dim(self) -> int:
        return self.n_heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.n_kv_heads * self.head_dim

    @property
    def layer_matmul_params(self) -> int:
        h = self.hidden
        return 2 * h * self.q_dim + 2 * h * self.kv_dim + 3 * h * self.intermediate

    @property
    def layer_params(self) -> int:
        bias = self.q_dim + 2 * self.kv_dim if self.qkv_bias else 0
        return self.layer_matmul_params + bias + 2 * self.hidden

    @property
    def embed_params(self) -> int:
        return self.vocab * self.hidden

    @property
    def head_params(self) -> int:
        """Output head plus the final norm."""
        if self.value_head:
            return self.hidden + 1 + self.hidden
        return (0 if self.tie_embeddings else self.vocab * self.hidden) + self.hidden

    @property
    def n_params(self) -> int:
        return self.n_layers * self.layer_params + self.embed_params + self.head_params

    @property
    def head_matmul_params(self) -> int:
        return self.hidden if self.value_head else self.vocab * self.hidden

    def flops_fwd_per_token(self, ctx: float) -> float:
        matmul = self.n_layers * self.layer_matmul_params + self.head_matmul_params
        return 2.0 * matmul + 4.0 * self.n_layers * self.q_dim * ctx

    def flops_fwd_bwd_per_token(self, ctx: float) -> float:
        return 3.0 * self.flops_fwd_per_token(ctx)

    @property
    def kv_bytes_per_token(self) -> int:
        return 2 * self.n_layers * self.kv_dim * self.dtype_bytes

    @property
    def act_bytes_per_token_layer(self) -> int:
        h, i = self.hidden, self.intermediate
        return (4 * h + 2 * self.q_dim + 2 * self.kv_dim + 4 * i) * self.dtype_bytes

    @property
    def act_bytes_per_token(self) -> int:
        return self.n_layers * self.act_bytes_per_token_layer

    @property
    def logit_bytes_per_token(self) -> int:
        """fp32 logits kept for the log-softmax (1 for a value head)."""
        return 4 * (1 if self.value_head else self.vocab)

    def as_critic(self) -> "ModelSpec":
        return replace(self, name=f"{self.name}-critic" if not self.value_head else self.name,
                       value_head=True)

    def to_dict(self) -> dict:
        return asdict(self)


def _llama(name, layers, hidden, inter, heads, kv, vocab=32000, tie=False, bias=False):
    return ModelSpec(name, layers, hidden, inter, heads, kv, vocab, tie, bias)


PRESETS: dict[str, ModelSpec] = {
    # Llama 2 (Touvron et al. 2023, table 1 + HF config.json); 34b = the Code Llama 34B shape
    "llama2-7b": _llama("llama2-7b", 32, 4096, 11008, 32, 32),
    "llama2-13b": _llama("llama2-13b", 40, 5120, 13824, 40, 40),
    "llama2-34b": _llama("llama2-34b", 48, 8192, 22016, 64, 8),
    "llama2-70b": _llama("llama2-70b", 80, 8192, 28672, 64, 8),
    # Qwen2.5 (HF config.json of each Qwen/Qwen2.5-*B)
    "qwen2.5-0.5b": _llama("qwen2.5-0.5b", 24, 896, 4864, 14, 2, 151936, True, True),
    "qwen2.5-1.5b": _llama("qwen2.5-1.5b", 28, 1536, 8960, 12, 2, 151936, True, True),
    "qwen2.5-3b": _llama("qwen2.5-3b", 36, 2048, 11008, 16, 2, 151936, True, True),
    "qwen2.5-7b": _llama("qwen2.5-7b", 28, 3584, 18944, 28, 4, 152064, False, True),
    "qwen2.5-14b": _llama("qwen2.5-14b", 48, 5120, 13824, 40, 8, 152064, False, True),
    "qwen2.5-32b": _llama("qwen2.5-32b", 64, 5120, 27648, 40, 8, 152064, False, True),
    "qwen2.5-72b": _llama("qwen2.5-72b", 80, 8192, 29568, 64, 8, 152064, False, True),
}


def from_hf_config(config: dict, name: str = "model") -> ModelSpec:
    """Spec from a Hugging Face config.json dict (Llama, Qwen2, Mistral keys)."""
    try:
        heads = int(config["num_attention_heads"])
        return ModelSpec(
            name=name,
            n_layers=int(config["num_hidden_layers"]),
            hidden=int(config["hidden_size"]),
            intermediate=int(config["intermediate_size"]),
            n_heads=heads,
            n_kv_heads=int(config.get("num_key_value_heads") or heads),
            vocab=int(config["vocab_size"]),
            tie_embeddings=bool(config.get("tie_word_embeddings", False)),
            qkv_bias=bool(config.get("attention_bias", config.get("model_type") == "qwen2")),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise UserError(f"config of {name} lacks or has a bad field: {exc}") from None


def spec_from_dict(data: dict) -> ModelSpec:
    try:
        return ModelSpec(**data)
    except TypeError as exc:
        raise UserError(f"bad model spec: {exc}") from None


def load_model_spec(text: str) -> ModelSpec:
    """A preset name, a config.json path, or a checkpoint directory holding config.json."""
    if text.lower() in PRESETS:
        return PRESETS[text.lower()]
    path = os.path.join(text, "config.json") if os.path.isdir(text) else text
    if not os.path.isfile(path):
        raise UserError(f"unknown model {text!r}: not a preset ({', '.join(PRESETS)}) nor a config.json")
    try:
        with open(path) as fh:
            config = json.load(fh)
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read {path}: {exc.__class__.__name__}") from None
    return from_hf_config(config, name=os.path.basename(os.path.dirname(os.path.abspath(path))))
