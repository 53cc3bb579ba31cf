"""Our Llama-family decoder: one implementation for rollout and training (DESIGN decision 1).

    h₀ = E[x];  hₗ' = hₗ + Attn(RMSNorm(hₗ));  hₗ₊₁ = hₗ' + MLP(RMSNorm(hₗ'));  logits = W_out·RMSNorm(h_L)
    Attn: q,k,v projections (qwen2: bias; qwen3: RMSNorm over head_dim on q,k), RoPE (rotate-half
    convention, default / linear / llama3 frequencies), grouped-query attention under one of three
    masks: an explicit boolean mask (padding, sliding windows, tree verification), `None` = causal over
    the fresh keys of right-padded rows (SDPA's `is_causal`, so flash kernels apply on CUDA), or
    `Segments` = packed sequences with block-diagonal causal attention (varlen; flash varlen on CUDA).
    MLP: down(SiLU(gate(x)) ⊙ up(x)).

Module names equal the HF checkpoint names (`model.layers.0.self_attn.o_proj.weight`, ...) except
two stacked projections: `qkv_proj` = [q_proj; k_proj; v_proj] and `gate_up_proj` = [gate_proj;
up_proj] (one matmul instead of three / two: fewer kernel launches per decode step); hf_io.py
stacks and splits them at the file boundary. The KV cache is not ours to own: `forward` takes any object with
`update(layer, k, v) -> (keys, values)` (the rollout engine's cache); without one, a layer attends to
its own keys (training / scoring). Parallelism is applied from outside; this file knows nothing of it.

Left out: dropout, MoE, attention sinks, RoPE types other than default / linear / llama3.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

from fastrlhf.model.config import ModelConfig


class KVCacheLike(Protocol):
    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store k, v [B, K, T, h] of the current tokens; return the keys/values to attend to [B, K, S, h]."""


class RMSNorm(nn.Module):
    """y = w ⊙ x / sqrt(mean(x²) + ε), computed in fp32 and cast back (as HF does)."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


def rope_inv_freq(cfg: ModelConfig) -> torch.Tensor:
    """θ_i = base^(−2i/h) for i < h/2, rescaled per RoPE type.

    linear: θ_i / factor. llama3: wavelengths λ_i = 2π/θ_i longer than L/low_freq_factor are divided by
    `factor`, shorter than L/high_freq_factor kept, and smoothly interpolated in between
    (L = original_max_position_embeddings), as in the Llama 3.1 release.
    """
    h = cfg.head_dim
    inv_freq = 1.0 / (cfg.rope_theta ** (torch.arange(0, h, 2, dtype=torch.int64).float() / h))
    scaling = cfg.rope_scaling or {}
    rope_type = scaling.get("rope_type", "default")
    if rope_type == "linear":
        inv_freq = inv_freq / float(scaling["factor"])
    elif rope_type == "llama3":
        factor, low, high = float(scaling["factor"]), float(scaling["low_freq_factor"]), float(scaling["high_freq_factor"])
        old_len = float(scaling["original_max_position_embeddings"])
        wavelen = 2 * math.pi / inv_freq
        scaled = torch.where(wavelen > old_len / low, inv_freq / factor, inv_freq)
        smooth = (old_len / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = (wavelen >= old_len / high) & (wavelen <= old_len / low)
        inv_freq = torch.where(medium, smoothed, scaled)
    return inv_freq


class Rotary(nn.Module):
    """cos/sin tables indexed by position; grown on demand (never the full 128k up front)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.register_buffer("inv_freq", rope_inv_freq(cfg), persistent=False)
        self.register_buffer("cos", torch.empty(0), persistent=False)
        self.register_buffer("sin", torch.empty(0), persistent=False)

    def _grow(self, length: int) -> None:
        length = max(length, 2 * self.cos.shape[0], 256)
        positions = torch.arange(length, dtype=torch.float32, device=self.inv_freq.device)
        freqs = positions[:, None] * self.inv_freq.float()[None, :]  # [P, h/2]
        emb = torch.cat([freqs, freqs], dim=-1)  # [P, h]
        self.cos, self.sin = emb.cos(), emb.sin()

    def ensure(self, length: int) -> None:
        """Make the tables cover positions < length (call before a compiled region)."""
        if length > self.cos.shape[0]:
            self._grow(length)

    def forward(self, positions: torch.Tensor, dtype: torch.dtype, check: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """`check=False`: the caller has `ensure`d the length (the rollout engine, at allocation, and
        compiled callers) — skipping the positions.max() read keeps a decode step free of host syncs."""
        if check and not torch.compiler.is_compiling():
            self.ensure(int(positions.max()) + 1 if positions.numel() else 1)
        return self.cos[positions].to(dtype), self.sin[positions].to(dtype)  # [B, T, h]


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [B, nH, T, h]; rotate-half RoPE: x·cos + rot(x)·sin with rot([a, b]) = [−b, a]."""
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos[:, None] + rotated * sin[:, None]


SHORT_QUERY = 16  # decode / verification steps use batched matmuls instead of the SDPA kernel


def short_query_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """softmax(q·kᵀ/√h + mask)·v for few queries, grouped-query without repeating K/V.

    q [B, H, T, h], k/v [B, K, S, h], mask [B, 1, T, S] (True = attend) → [B, H, T, h]. The G = H/K
    query heads that share a KV head are folded into the query axis, so one bmm per step serves them
    all. The fused SDPA kernels on CPU are tiled for long queries and are several times slower here.
    """
    B, H, T, h = q.shape
    K, S = k.shape[1], k.shape[2]
    G = H // K
    scores = torch.matmul(q.reshape(B, K, G * T, h), k.transpose(-1, -2)) * (h ** -0.5)  # [B, K, G·T, S]
    # finite fill: a fully masked (padding) row becomes uniform instead of NaN, which would otherwise
    # leak through 0·NaN into real rows that read its value vector
    scores = scores.view(B, K, G, T, S).masked_fill(~mask[:, :, None], torch.finfo(scores.dtype).min)
    probs = torch.softmax(scores, dim=-1).view(B, K, G * T, S)
    return torch.matmul(probs, v).view(B, H, T, h)


@dataclass(frozen=True)
class Segments:
    """n sequences packed into one row of L tokens, sequence i at [cu_seqlens[i], cu_seqlens[i+1]).

    Attention is causal inside each sequence and never crosses one (block-diagonal). `pad_index`
    [n, max_len] gathers the packed tokens into right-padded rows (clamped at the sequence's last token),
    `token_index` [L] maps them back: the fallback kernel runs SDPA on the padded rows, so only
    attention sees padding, never the matmuls of the projections, MLP or LM head."""
    cu_seqlens: torch.Tensor  # [n + 1] int32
    max_len: int
    positions: torch.Tensor  # [L] position of each token inside its sequence
    pad_index: torch.Tensor  # [n, max_len] int64
    token_index: torch.Tensor  # [L] int64 into the flattened [n · max_len] padded rows

    @classmethod
    def from_lengths(cls, lengths: list[int], device) -> "Segments":
        n, max_len = len(lengths), max(lengths)
        lens = torch.tensor(lengths, dtype=torch.long, device=device)
        starts = torch.cumsum(lens, 0) - lens
        cu = torch.cat([starts, starts[-1:] + lens[-1:]]).to(torch.int32)
        seq_of_token = torch.repeat_interleave(torch.arange(n, device=device), lens)
        positions = torch.arange(int(lens.sum()), device=device) - starts[seq_of_token]
        columns = torch.arange(max_len, device=device)
        pad_index = starts[:, None] + torch.minimum(columns[None], lens[:, None] - 1)
        return cls(cu, max_len, positions, pad_index, seq_of_token * max_len + positions)


def varlen_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, seg: Segments, window: int | None) -> torch.Tensor:
    """Block-diagonal causal attention of packed sequences: q [1, H, L, h], k/v [1, K, L, h] → [1, H, L, h].

    CUDA with bf16 / fp16 and no sliding window: flash varlen (`torch.nn.attention.varlen`, unverified
    here: no GPU). Elsewhere: gather into right-padded rows [n, ·, max_len, h], causal SDPA (padded
    keys lie after every real query, so causality alone masks them) — or, for rows of ≤ SHORT_QUERY
    tokens, `short_query_attention`, as the padded path does (same kernel, same rounding) — and
    gather the real tokens back."""
    H, K = q.shape[1], k.shape[1]
    if q.is_cuda and q.dtype in (torch.bfloat16, torch.float16) and window is None:
        from torch.nn.attention.varlen import varlen_attn

        cu = seg.cu_seqlens
        out = varlen_attn(q[0].transpose(0, 1), k[0].transpose(0, 1), v[0].transpose(0, 1), cu, cu,
                          seg.max_len, seg.max_len, window_size=(-1, 0), enable_gqa=H != K)  # [L, H, h]
        return out.transpose(0, 1)[None]
    def padded(x):  # [1, nH, L, h] → [n, nH, max_len, h]
        return x[0][:, seg.pad_index].transpose(0, 1)
    mask = None
    pos = torch.arange(seg.max_len, device=q.device)
    if window is not None or seg.max_len <= SHORT_QUERY:
        mask = pos[None, :] <= pos[:, None]
        if window is not None:
            mask = mask & (pos[:, None] - pos[None, :] < window)
    if seg.max_len <= SHORT_QUERY:  # the kernel the padded path and the engine's decode use at this length
        out = short_query_attention(padded(q), padded(k), padded(v), mask[None, None])
    else:
        out = F.scaled_dot_product_attention(padded(q), padded(k), padded(v), attn_mask=mask, is_causal=mask is None,
                                             enable_gqa=H != K)  # [n, H, max_len, h]
    h = q.shape[-1]
    return out.transpose(1, 2).reshape(-1, H, h)[seg.token_index].transpose(0, 1)[None]


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int):
        super().__init__()
        self.layer, self.cfg = layer, cfg
        d, h, H, K = cfg.hidden_size, cfg.head_dim, cfg.num_heads, cfg.num_kv_heads
        self.qkv_proj = nn.Linear(d, (H + 2 * K) * h, bias=cfg.attention_bias)  # HF's q_proj, k_proj, v_proj stacked
        self.o_proj = nn.Linear(H * h, d, bias=False)
        if cfg.qk_norm:
            self.q_norm = RMSNorm(h, cfg.rms_norm_eps)
            self.k_norm = RMSNorm(h, cfg.rms_norm_eps)

    def forward(self, x, cos, sin, mask, cache: KVCacheLike | None):
        B, T, _ = x.shape
        h, H, K = self.cfg.head_dim, self.cfg.num_heads, self.cfg.num_kv_heads
        q, k, v = self.qkv_proj(x).view(B, T, H + 2 * K, h).split([H, K, K], dim=2)
        v = v.transpose(1, 2)  # [B, K, T, h]
        if self.cfg.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        q = apply_rope(q.transpose(1, 2), cos, sin)  # [B, H, T, h]
        k = apply_rope(k.transpose(1, 2), cos, sin)  # [B, K, T, h]
        if cache is not None:
            k, v = cache.update(self.layer, k, v)  # [B, K, S, h]
        if isinstance(mask, Segments):
            out = varlen_attention(q, k, v, mask, self.cfg.sliding_window[self.layer])
        elif T <= SHORT_QUERY:
            if mask is None:  # causal over the fresh keys
                S = k.shape[2]
                mask = torch.ones(T, S, dtype=torch.bool, device=q.device).tril(S - T)[None, None]
            out = short_query_attention(q, k, v, mask)
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None,
                                                 enable_gqa=H != K)  # [B, H, T, h]
        return self.o_proj(out.transpose(1, 2).reshape(B, T, H * h))


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.gate_up_proj = nn.Linear(cfg.hidden_size, 2 * cfg.intermediate_size, bias=False)  # HF's gate_proj, up_proj stacked
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)

    def forward(self, x):
        gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
        return self.down_proj(F.silu(gate) * up)


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = Attention(cfg, layer)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = MLP(cfg)

    def forward(self, x, cos, sin, mask, cache):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, mask, cache)
        return x + self.mlp(self.post_attention_layernorm(x))


class Backbone(nn.Module):
    """HF's `model.*`: embeddings, blocks, final norm."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(Block(cfg, i) for i in range(cfg.num_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.rotary = Rotary(cfg)


def attention_mask(q_positions: torch.Tensor, k_positions: torch.Tensor, k_valid: torch.Tensor, window: int | None) -> torch.Tensor:
    """Boolean mask [B, 1, T, S]: query i may attend key j iff j is valid, pos_j ≤ pos_i and, with a
    sliding window w, pos_i − pos_j < w. q_positions [B, T], k_positions [B, S], k_valid [B, S]."""
    q = q_positions[:, None, :, None]
    k = k_positions[:, None, None, :]
    mask = (k <= q) & k_valid[:, None, None, :]
    if window is not None:
        mask = mask & (q - k < window)
    return mask


class CausalLM(nn.Module):
    """Decoder + LM head (+ optional scalar `score` head for value / reward models)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.config = cfg
        self.model = Backbone(cfg)
        if not cfg.tie_word_embeddings:
            self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        if cfg.score_head:
            self.score = nn.Linear(cfg.hidden_size, 1, bias=False)

    @property
    def output_weight(self) -> torch.Tensor:
        return self.model.embed_tokens.weight if self.config.tie_word_embeddings else self.lm_head.weight

    def hidden_states(self, input_ids, positions, masks: dict | None = None, cache: KVCacheLike | None = None) -> torch.Tensor:
        """input_ids, positions [B, T]; masks: one mask per distinct window (dict window → [B,1,T,S]),
        or None for causal attention of right-padded rows that start at position 0 (a layer with a
        sliding window then gets its explicit window mask). Returns final-normed hidden states [B, T, d]."""
        if masks is None:
            ones = torch.ones_like(positions, dtype=torch.bool)
            masks = {w: None if w is None else attention_mask(positions, positions, ones, w)
                     for w in set(self.config.sliding_window)}
        x = self.model.embed_tokens(input_ids)
        cos, sin = self.model.rotary(positions, x.dtype, check=cache is None)  # a cache's owner ensured the tables
        for layer, window in zip(self.model.layers, self.config.sliding_window):
            x = layer(x, cos, sin, masks[window], cache)
        return self.model.norm(x)

    def packed_hidden_states(self, input_ids: torch.Tensor, segments: Segments) -> torch.Tensor:
        """Packed sequences, no padding: input_ids [L] (segments' sequences back to back) → hidden [L, d]."""
        masks = {w: segments for w in set(self.config.sliding_window)}
        return self.hidden_states(input_ids[None], segments.positions[None], masks)[0]

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return F.linear(hidden, self.output_weight)

    def values(self, hidden: torch.Tensor) -> torch.Tensor:
        """Scalar head per position: [B, T, d] → [B, T]."""
        return self.score(hidden).squeeze(-1)

    def masks_for(self, q_positions, k_positions, k_valid) -> dict[int | None, torch.Tensor]:
        return {w: attention_mask(q_positions, k_positions, k_valid, w) for w in set(self.config.sliding_window)}

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Training / scoring forward on right-padded sequences → logits [B, T, V].

        attention_mask [B, T] (1 = real token) follows HF; sequences must start at column 0.
        """
        hidden = self.forward_hidden(input_ids, attention_mask)
        return self.logits(hidden)

    def forward_hidden(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Right-padded rows: causal attention suffices (a real token's keys are all real), so the
        attention mask only tells where rows end; padded positions' outputs are garbage the caller drops."""
        B, T = input_ids.shape
        positions = torch.arange(T, device=input_ids.device).expand(B, T)
        return self.hidden_states(input_ids, positions, None)
