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
import math
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
        sizes = {"vocab_size": self.vocab_size, "hidden_size": self.hidden_size, "intermediate_size": self.intermediate_size,
                 "num_hidden_layers": self.num_layers, "num_attention_heads": self.num_heads,
                 "num_key_value_heads": self.num_kv_heads, "head_dim": self.head_dim}
        problems += [f"{name} must be >= 1, got {value}" for name, value in sizes.items() if value < 1]
        if problems:
            raise UserError("; ".join(problems))
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
        """Read an HF config dict (transformers 4.x `rope_theta`/`rope_scaling` or 5.x `rope_parameters`).

        Every key is type- and range-checked (`_HFReader`): a bad value is a one-line `UserError`
        naming `source` and the key, e.g. `config.json: 'hidden_size' must be an integer >= 1, got -4`."""
        if not isinstance(hf, dict):
            raise UserError(f"{source}: expected a JSON object, got {type(hf).__name__}")
        read = _HFReader(hf, source)
        model_type = hf.get("model_type")
        if not isinstance(model_type, str) or model_type not in ARCHITECTURES:
            raise UserError(f"{source}: model_type {_short(model_type)} is not supported (supported: {', '.join(ARCHITECTURES)})")
        hidden_act = read.string("hidden_act", "silu")
        if hidden_act != "silu":
            raise UserError(f"{source}: hidden_act {_short(hidden_act)} is not supported (only silu)")
        if read.boolean("mlp_bias", False):
            raise UserError(f"{source}: mlp_bias=true is not supported")
        hidden, heads = read.size("hidden_size"), read.size("num_attention_heads")
        layers = read.size("num_hidden_layers")
        kv_heads = read.size("num_key_value_heads", heads)
        head_dim = read.size("head_dim", hidden // heads) if hidden >= heads or hf.get("head_dim") is not None else 0
        if head_dim < 1:
            raise UserError(f"{source}: hidden_size {hidden} / num_attention_heads {heads} gives head_dim 0; "
                            "set 'head_dim'")
        rope_theta, rope_scaling = read.rope()
        archs = read.string_list("architectures")
        fields = dict(
            model_type=model_type,
            vocab_size=read.size("vocab_size"),
            hidden_size=hidden,
            intermediate_size=read.size("intermediate_size"),
            num_layers=layers,
            num_heads=heads,
            num_kv_heads=kv_heads,
            head_dim=head_dim,
            rms_norm_eps=read.positive("rms_norm_eps", 1e-6),
            rope_theta=rope_theta,
            rope_scaling=rope_scaling,
            max_position_embeddings=read.integer("max_position_embeddings", 2048, minimum=1),
            tie_word_embeddings=read.boolean("tie_word_embeddings", False),
            attention_bias=read.boolean("attention_bias", model_type == "qwen2"),
            qk_norm=model_type == "qwen3",
            sliding_window=_sliding_windows(read, model_type, layers),
            score_head=any(a.endswith("ForSequenceClassification") for a in archs),
            bos_token_id=read.token_id("bos_token_id"),
            eos_token_id=read.token_ids("eos_token_id"),
            pad_token_id=read.token_id("pad_token_id"),
        )
        try:
            return cls(**fields)
        except UserError as exc:
            raise UserError(f"{source}: {exc}") from None

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


def _sliding_windows(read: "_HFReader", model_type: str, layers: int) -> list[int | None]:
    window = read.integer("sliding_window", None, minimum=0) if model_type != "llama" else None
    window = window or None  # 0 / null: no window
    if model_type == "mistral":
        return [window] * layers
    if model_type in ("qwen2", "qwen3") and read.boolean("use_sliding_window", False) and window:
        types = read.string_list("layer_types")
        if types:
            unknown = [t for t in types if t not in ("full_attention", "sliding_attention")]
            if unknown:
                raise UserError(f"{read.source}: 'layer_types' entries must be full_attention or sliding_attention, got {_short(unknown[0])}")
            return [window if t == "sliding_attention" else None for t in types]
        first_full = read.integer("max_window_layers", layers, minimum=0)
        return [None if i < first_full else window for i in range(layers)]
    return [None] * layers


MAX_SIZE = 2 ** 24  # bound on every tensor dimension read from config.json (products stay far inside int64)
_REQUIRED = object()


def _short(value: Any, limit: int = 60) -> str:
    """`value` for a one-line message: repr, newlines escaped, cut to `limit` characters."""
    try:
        text = repr(value)
    except ValueError:  # an int of more than 4300 digits
        text = f"<an integer of about {value.bit_length() * 0.30103:.0f} digits>"
    return text if len(text) <= limit else text[:limit] + "..."


class _HFReader:
    """Typed access to the keys of an HF config dict: each method returns the value (or `default` when
    the key is missing or null) or raises a one-line `UserError` naming the file and the key."""

    def __init__(self, hf: dict[str, Any], source: str):
        self.hf, self.source = hf, source

    def _get(self, key: str, default: Any) -> Any:
        value = self.hf.get(key)
        if value is None:
            if default is _REQUIRED:
                raise UserError(f"{self.source}: missing required key {key!r}")
            return default
        return value

    def _bad(self, key: str, expected: str, value: Any) -> UserError:
        return UserError(f"{self.source}: {key!r} must be {expected}, got {_short(value)}")

    def integer(self, key: str, default: Any = _REQUIRED, minimum: int = 1, maximum: int | None = None) -> Any:
        value = self._get(key, default)
        if value is default:
            return value
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum or (maximum is not None and value > maximum):
            bound = f" in {minimum}..{maximum}" if maximum is not None else f" >= {minimum}"
            raise self._bad(key, f"an integer{bound}", value)
        return value

    def size(self, key: str, default: Any = _REQUIRED) -> int:
        return self.integer(key, default, minimum=1, maximum=MAX_SIZE)

    def positive(self, key: str, default: float) -> float:
        value = self._get(key, default)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
            raise self._bad(key, "a finite number > 0", value)
        return float(value)

    def boolean(self, key: str, default: bool) -> bool:
        value = self._get(key, default)
        if not isinstance(value, bool):
            raise self._bad(key, "true or false", value)
        return value

    def string(self, key: str, default: str) -> str:
        value = self._get(key, default)
        if not isinstance(value, str):
            raise self._bad(key, "a string", value)
        return value

    def string_list(self, key: str) -> list[str]:
        value = self._get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self._bad(key, "a list of strings", value)
        return value

    def token_id(self, key: str) -> int | None:
        value = self._get(key, None)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise self._bad(key, "a token id (an integer) or null", value)
        return value

    def token_ids(self, key: str) -> int | list[int] | None:
        value = self._get(key, None)
        if isinstance(value, list) and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            return value
        return self.token_id(key)

    def rope(self) -> tuple[float, dict[str, Any] | None]:
        """(rope_theta, rope_scaling or None) from `rope_parameters` (transformers 5) and / or
        `rope_scaling` + `rope_theta` (4.x), with the parameters each RoPE type reads checked."""
        rope: dict[str, Any] = {}
        for key in ("rope_parameters", "rope_scaling"):
            value = self._get(key, {})
            if not isinstance(value, dict):
                raise self._bad(key, "an object", value)
            value = dict(value)
            if "type" in value and "rope_type" not in value:
                value["rope_type"] = value.pop("type")
            rope.update(value)
        theta = rope.pop("rope_theta", None)
        theta = _HFReader({"rope_theta": theta if theta is not None else self.hf.get("rope_theta")}, self.source)
        rope_theta = theta.positive("rope_theta", 10000.0)
        if rope_theta < 1:  # the base of θ_i = base^(−2i/h): below 1 the "frequencies" grow without bound
            raise UserError(f"{self.source}: 'rope_theta' must be >= 1, got {rope_theta}")
        rope_type = rope.get("rope_type", "default")
        if not isinstance(rope_type, str):
            raise self._bad("rope_type", "a string", rope_type)
        params = _HFReader(rope, f"{self.source}: RoPE type {rope_type!r}")
        if rope_type in ("linear", "llama3"):
            factor = params.positive("factor", _REQUIRED)
            if factor < 1:  # as transformers' rope_config_validation
                raise UserError(f"{params.source}: 'factor' must be >= 1, got {factor}")
        if rope_type == "llama3":
            low, high = params.positive("low_freq_factor", _REQUIRED), params.positive("high_freq_factor", _REQUIRED)
            if high <= low:
                raise UserError(f"{self.source}: RoPE 'high_freq_factor' ({high}) must be greater than "
                                f"'low_freq_factor' ({low})")
            params.positive("original_max_position_embeddings", _REQUIRED)
        return rope_theta, (None if rope_type == "default" else rope)
