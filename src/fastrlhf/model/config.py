"""`ModelConfig`: the shape of a Llama-family decoder, read from / written to HF `config.json`.

Supported `model_type`s: llama (incl. llama3 RoPE scaling), qwen2 (q/k/v bias), qwen3 (per-head
q/k RMSNorm), mistral (sliding-window attention). Anything else is a `UserError` naming the file.

Cost estimates live beside the shape (nanochat style); each is derived in its docstring and tested
against a hand count in tests/model/test_config.py:
- `num_params()`                  — exact parameter count of our decoder
- `flops_per_token(context)`      — forward FLOPs per token (matmuls only)
- `train_flops_per_token(context)`— forward + backward = 3 × forward
- `kv_bytes_per_token(bytes)`     — KV-cache bytes one token occupies

Left out: MoE variants, MLA, non-SiLU activations, RoPE types other than default / linear / llama3.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from fastrlhf.errors import UserError

ARCHITECTURES = {
    "llama": "LlamaForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
    "mistral": "MistralForCausalLM",
}
SCORE_ARCHITECTURES = {k: v.replace("ForCausalLM", "ForSequenceClassification") for k, v in ARCHITECTURES.items()}
ROPE_TYPES = ("default", "linear", "llama3")


@dataclass
class ModelConfig:
    model_type: str = "llama"
    vocab_size: int = 32000
    hidden_size: int = 256
    intermediate_size: int = 688
    num_layers: int = 4
    num_heads: int = 4
    num_kv_heads: int = 4
    head_dim: int = 64
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_scaling: dict[str, Any] | None = None  # {"rope_type": "llama3" | "linear", ...}
    max_position_embeddings: int = 2048
    tie_word_embeddings: bool = False
    attention_bias: bool = False  # q/k/v projections carry a bias (qwen2)
    qk_norm: bool = False  # RMSNorm over head_dim on q and k before RoPE (qwen3)
    sliding_window: list[int | None] = field(default_factory=list)  # per layer; None = full
    score_head: bool = False  # scalar head (`score`) for value / reward models
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None
    pad_token_id: int | None = None

    def __post_init__(self) -> None:
        if not self.sliding_window:
            self.sliding_window = [None] * self.num_layers
        problems = []
        if self.model_type not in ARCHITECTURES:
            problems.append(f"model_type '{self.model_type}' is not supported (supported: {', '.join(ARCHITECTURES)})")
        if self.num_heads % max(self.num_kv_heads, 1):
            problems.append(f"num_attention_heads {self.num_heads} is not a multiple of num_key_value_heads {self.num_kv_heads}")
        if self.head_dim % 2:
            problems.append(f"head_dim {self.head_dim} must be even for RoPE")
        if len(self.sliding_window) != self.num_layers:
            problems.append("layer_types / sliding_window does not match num_hidden_layers")
        rope_type = (self.rope_scaling or {}).get("rope_type", "default")
        if rope_type not in ROPE_TYPES:
            problems.append(f"rope type '{rope_type}' is not supported (supported: {', '.join(ROPE_TYPES)})")
        if problems:
            raise UserError("; ".join(problems))

    # ---------------------------------------------------------------- HF config.json <-> ours
    @classmethod
    def from_hf_dict(cls, hf: dict[str, Any], source: str = "config.json") -> "ModelConfig":
        """Read an HF config dict (transformers 4.x `rope_theta`/`rope_scaling` or 5.x `rope_parameters`)."""
        model_type = hf.get("model_type")
        if model_type not in ARCHITECTURES:
            raise UserError(f"{source}: model_type {model_type!r} is not supported (supported: {', '.join(ARCHITECTURES)})")
        if hf.get("hidden_act", "silu") != "silu":
            raise UserError(f"{source}: hidden_act {hf['hidden_act']!r} is not supported (only silu)")
        try:
            hidden, heads, layers = int(hf["hidden_size"]), int(hf["num_attention_heads"]), int(hf["num_hidden_layers"])
            rope = dict(hf.get("rope_parameters") or {})
            scaling = hf.get("rope_scaling") or None
            if scaling:
                rope.update(scaling)
                rope.setdefault("rope_type", rope.pop("type", "default"))
            rope_theta = float(rope.pop("rope_theta", hf.get("rope_theta", 10000.0)))
            rope_type = rope.get("rope_type", "default")
            archs = hf.get("architectures") or []
            cfg = cls(
                model_type=model_type,
                vocab_size=int(hf["vocab_size"]),
                hidden_size=hidden,
                intermediate_size=int(hf["intermediate_size"]),
                num_layers=layers,
                num_heads=heads,
                num_kv_heads=int(hf.get("num_key_value_heads") or heads),
                head_dim=int(hf.get("head_dim") or hidden // heads),
                rms_norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
                rope_theta=rope_theta,
                rope_scaling=None if rope_type == "default" else rope,
                max_position_embeddings=int(hf.get("max_position_embeddings", 2048)),
                tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
                attention_bias=bool(hf.get("attention_bias", model_type == "qwen2")),
                qk_norm=model_type == "qwen3",
                sliding_window=_sliding_windows(hf, model_type, layers),
                score_head=any(a.endswith("ForSequenceClassification") for a in archs),
                bos_token_id=hf.get("bos_token_id"),
                eos_token_id=hf.get("eos_token_id"),
                pad_token_id=hf.get("pad_token_id"),
            )
        except KeyError as exc:
            raise UserError(f"{source}: missing required key {exc.args[0]!r}") from None
        except (TypeError, ValueError) as exc:
            raise UserError(f"{source}: malformed value ({exc})") from None
        except UserError as exc:
            raise UserError(f"{source}: {exc}") from None
        if hf.get("mlp_bias"):
            raise UserError(f"{source}: mlp_bias=true is not supported")
        return cfg

    def to_hf_dict(self) -> dict[str, Any]:
        """An HF config dict that `transformers.AutoConfig` (4.45+ and 5.x) reads back to the same model."""
        rope_parameters = {"rope_type": "default", **(self.rope_scaling or {}), "rope_theta": self.rope_theta}
        windows = [w for w in self.sliding_window if w is not None]
        out: dict[str, Any] = {
            "architectures": [(SCORE_ARCHITECTURES if self.score_head else ARCHITECTURES)[self.model_type]],
            "model_type": self.model_type,
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "num_key_value_heads": self.num_kv_heads,
            "head_dim": self.head_dim,
            "hidden_act": "silu",
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "rope_scaling": None if self.rope_scaling is None else {**self.rope_scaling},
            "rope_parameters": rope_parameters,
            "max_position_embeddings": self.max_position_embeddings,
            "tie_word_embeddings": self.tie_word_embeddings,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": self.eos_token_id,
            "pad_token_id": self.pad_token_id,
            "torch_dtype": "float32",
        }
        if self.model_type in ("llama", "mistral"):
            out["attention_bias"] = self.attention_bias
            out["mlp_bias"] = False
        if self.model_type == "mistral":
            out["sliding_window"] = windows[0] if windows else None
        if self.model_type in ("qwen2", "qwen3"):
            out["use_sliding_window"] = bool(windows)
            out["sliding_window"] = windows[0] if windows else None
            out["max_window_layers"] = self.num_layers
            out["layer_types"] = ["full_attention" if w is None else "sliding_attention" for w in self.sliding_window]
        if self.model_type == "qwen3":
            out["attention_bias"] = self.attention_bias
        if self.score_head:
            out["num_labels"] = 1
        return out

    def replace(self, **changes: Any) -> "ModelConfig":
        return dataclasses.replace(self, **changes)

    # ---------------------------------------------------------------- cost estimates
    def num_params(self) -> int:
        """Exact parameter count.

        Per layer: q = d·(H·h) [+H·h bias], k and v = d·(K·h) each [+K·h bias], o = (H·h)·d,
        MLP = 3·d·I (gate, up, down), two RMSNorms = 2d [+2h for qwen3 q/k norms].
        Plus embeddings V·d, final norm d, lm_head V·d unless tied, scalar head d.
        (d hidden, h head_dim, H heads, K kv heads, I intermediate, V vocab.)
        """
        d, h, H, K, I, V = self.hidden_size, self.head_dim, self.num_heads, self.num_kv_heads, self.intermediate_size, self.vocab_size
        per_layer = d * H * h + 2 * d * K * h + H * h * d + 3 * d * I + 2 * d
        if self.attention_bias:
            per_layer += H * h + 2 * K * h
        if self.qk_norm:
            per_layer += 2 * h
        total = V * d + self.num_layers * per_layer + d
        if not self.tie_word_embeddings:
            total += V * d
        if self.score_head:
            total += d
        return total

    def matmul_params_per_token(self) -> int:
        """Weights each token is multiplied with: all linear layers and the LM head (not the embedding lookup, norms, biases)."""
        d, h, H, K, I, V = self.hidden_size, self.head_dim, self.num_heads, self.num_kv_heads, self.intermediate_size, self.vocab_size
        return self.num_layers * (2 * d * H * h + 2 * d * K * h + 3 * d * I) + V * d

    def flops_per_token(self, context: int) -> int:
        """Forward FLOPs for one token attending to `context` tokens (itself included).

        A matmul with an m×n weight costs 2·m·n FLOPs per token (multiply + add), so the linear layers
        and LM head cost 2·P_mm (P_mm = `matmul_params_per_token`). Attention scores q·kᵀ and the
        weighted sum of values each cost 2·H·h FLOPs per attended position per layer:
        4·L·H·h·context. Norms, RoPE, softmax and the SiLU are O(d) and left out.
        """
        return 2 * self.matmul_params_per_token() + 4 * self.num_layers * self.num_heads * self.head_dim * context

    def train_flops_per_token(self, context: int) -> int:
        """Forward + backward: the backward pass costs two forwards (grads w.r.t. inputs and weights)."""
        return 3 * self.flops_per_token(context)

    def kv_bytes_per_token(self, bytes_per_element: int = 4) -> int:
        """KV-cache bytes per token: K and V, each K_heads·h elements, in each of L layers."""
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * bytes_per_element


def _sliding_windows(hf: dict[str, Any], model_type: str, layers: int) -> list[int | None]:
    window = hf.get("sliding_window")
    if model_type == "mistral":
        return [int(window) if window else None] * layers
    if model_type in ("qwen2", "qwen3") and hf.get("use_sliding_window") and window:
        types = hf.get("layer_types")
        if types:
            return [int(window) if t == "sliding_attention" else None for t in types]
        first_full = int(hf.get("max_window_layers", layers))
        return [None if i < first_full else int(window) for i in range(layers)]
    return [None] * layers
