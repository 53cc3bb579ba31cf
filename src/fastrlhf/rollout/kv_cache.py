"""Preallocated KV cache of fixed slots, and the two views the decoder writes through.

Storage per layer: K and V of shape [num_slots, max_len, kv_heads, head_dim]. A slot holds one
sequence; position j of a slot holds the key/value of that sequence's token j. Token-major layout so
writing one token of every active slot is a single `index_copy_` of contiguous rows (row =
slot · max_len + position); attention reads a transposed view [B, kv_heads, S, head_dim]. Stale entries past a
sequence's length are never read: every read is masked by position.

- `PrefillView`: the decoder computes k, v for N prompt rows × T positions; row `src[i]` is written
  to slot `slots[i]` (several slots may share a row: the n samples of one prompt are prefilled once
  and their KV copied — the shared-prefix saving of RLHFless). Attention reads the fresh k, v.
- `DecodeView`: one new token per active slot at position `positions[b]`; attention reads the slot's
  keys 0..S−1 (S ≥ longest active length + 1, a bound the engine keeps on the host; keys past a
  query's position are masked). When the active slots are exactly 0..B−1 the read is a view of the
  storage, otherwise a gather. Both views are device ops only (no host sync), so the engine's
  static decode step can run inside a CUDA graph.

Sample migration with K/V (engine `take(with_kv=True)` / `add`) moves a slot's live rows directly:
`gather` reads [0, span) of some slots for every layer as one [B, layers, 2, span, kv_heads, head_dim]
tensor (2: K, V), `write` puts [layers, 2, R, kv_heads, head_dim] rows at R flat rows
(slot · max_len + position) with one `index_copy_` per layer and K/V — in place, so the static
addresses of compile mode's cache survive.

The engine sizes a cache per generate call (slots ≤ sequences of the call, positions = longest
prompt + max_new_tokens) and drops it when the call returns; K/V take the model's parameter dtype
(bf16 for a bf16 rollout copy). Storage is zeroed, not left uninitialised: masked keys get
probability 0, and 0 · v must stay 0 (garbage could be NaN).

Left out: paged blocks (fixed slots are simpler and fast at RLHF batch sizes), prefix trees across
different prompts, quantised KV.
"""

from __future__ import annotations

import torch

from fastrlhf.model.config import ModelConfig


class KVCache:
    def __init__(self, cfg: ModelConfig, num_slots: int, max_len: int, dtype: torch.dtype, device: torch.device | str):
        shape = (num_slots, max_len, cfg.num_kv_heads, cfg.head_dim)
        self.k = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(cfg.num_layers)]
        self.v = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(cfg.num_layers)]
        self.num_slots, self.max_len = num_slots, max_len

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.k + self.v)

    def gather(self, slots: torch.Tensor, span: int) -> torch.Tensor:
        """Positions [0, span) of `slots` [B]: [B, layers, 2, span, kv_heads, head_dim] (a copy)."""
        return torch.stack([torch.stack([k[slots, :span], v[slots, :span]], 1) for k, v in zip(self.k, self.v)], 1)

    def write(self, rows: torch.Tensor, data: torch.Tensor) -> None:
        """data [layers, 2, R, kv_heads, head_dim] → flat rows `rows` [R] (slot · max_len + position)."""
        for layer, (k, v) in enumerate(zip(self.k, self.v)):
            for j, store in enumerate((k, v)):
                store.view(-1, *store.shape[2:]).index_copy_(0, rows, data[layer, j])


class PrefillView:
    """Write prompt KV rows into slots; attend to the fresh keys."""

    def __init__(self, cache: KVCache, slots: torch.Tensor, src_rows: torch.Tensor, length: int):
        self.cache, self.slots, self.src, self.length = cache, slots, src_rows, length

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor):
        # k, v: [N, K, T, h]
        T = self.length
        self.cache.k[layer][self.slots, :T] = k[self.src].transpose(1, 2)
        self.cache.v[layer][self.slots, :T] = v[self.src].transpose(1, 2)
        return k, v


class DecodeView:
    """Write T new tokens per active slot at their positions (T = 1 for plain decoding, 1 + γ for a
    speculative verification pass); attend to each slot's first `span` positions."""

    def __init__(self, cache: KVCache, slots: torch.Tensor, positions: torch.Tensor, span: int, contiguous: bool):
        # positions: [B] (one token each) or [B, T]
        self.cache, self.slots, self.span = cache, slots, span
        positions = positions if positions.dim() == 2 else positions[:, None]
        self.rows = (slots[:, None] * cache.max_len + positions).reshape(-1)  # [B·T] rows in the flat storage
        self.contiguous = contiguous  # slots == arange(B): read a view instead of gathering

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor):
        # k, v: [B, K, T, h]
        for store, new in ((self.cache.k[layer], k), (self.cache.v[layer], v)):
            store.view(-1, *store.shape[2:]).index_copy_(0, self.rows, new.transpose(1, 2).reshape(-1, *store.shape[2:]))
        kc, vc = self.cache.k[layer], self.cache.v[layer]
        if self.contiguous:
            B = self.slots.shape[0]
            kc, vc = kc[:B, : self.span], vc[:B, : self.span]
        else:
            kc, vc = kc[self.slots, : self.span], vc[self.slots, : self.span]
        return kc.transpose(1, 2), vc.transpose(1, 2)  # [B, K, S, h]
