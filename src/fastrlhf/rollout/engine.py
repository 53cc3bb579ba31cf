"""The rollout engine: batched generation over a slotted KV cache with continuous admission.

Generation is a ladder of small functions (gpt-fast style):
    sample (sampler.py) → _prefill (admitted prompts, once per distinct prompt) → _decode (one token
    for every running slot) → _commit (record tokens, finish sequences) → step → generate.
`step()` admits waiting sequences into free slots, prefills them, then decodes one token for every
running sequence. All per-token work is tensor ops over the batch; Python touches a sequence only
when it is admitted or finishes.

Every finished `Sequence` carries its token ids, the per-token log-probs of the sampling
distribution (from the same `sampling_logprobs` the trainer uses), its finish reason and the policy
version that produced it.

Speculative decoding plugs in at `_decode` (`speculator=`, see speculative/verify.py): it replaces
the one-token decode with a draft + verification pass. A speculator touches the engine only through
the *speculation interface* below (`running_sequences`, `generated_tokens`, `output_tokens`,
`next_tokens`, `sampling_state`, `cache_size`, `verify_forward`, `append`, and the plain
`decode_one`), never the cache or the per-slot state tensors.

Cache invariant (kv_cache.py): slot s holds live K/V at positions [0, lengths[s]); every position
≥ lengths[s] is dead — masked by position and rewritten before it is read. Every write that is not a
sequence's own next token (speculative drafts, the static decode's idle slots) goes to dead positions.

The decode hot path, written for a GPU:
- host syncs: one per plain decode step, the stop check in `_commit` (`done.any()`), plus one copy
  of the finished rows when a sequence ends. The key span comes from the host's copy of the slot
  lengths (prompt length at admission + tokens appended), the active-slots tensor is re-sent only
  when the running set changes, and host → device copies go through pinned memory, non-blocking.
  A speculative pass re-copies the lengths once after the speculator's `append`s (device slots),
  as `verify_forward`'s `positions.max()` did before. (The decoder's `Rotary.forward` still reads
  `positions.max()` in eager mode — decoder.py, outside this package; it is skipped inside a
  compiled graph.)
- sampling math is fp32 whatever the model dtype (bf16 policies decode with a bf16 KV cache);
- prefill runs causal attention (`masks=None`: SDPA `is_causal`, flash kernels on CUDA);
- the KV cache is sized per generate call (min(num_slots, sequences) slots × longest prompt +
  max_new_tokens) and released when the call returns (`release()`), except in compile mode
  (num_slots slots, re-used by every call it is big enough for: one compiled shape);
- `compile=True` on CUDA: the static all-slots decode step is compiled with
  `mode="reduce-overhead"` (CUDA graphs), the cache tensors marked static addresses.

Unverified without a GPU (written so, not measured or run): CUDA-graph capture of the static step
(no graph breaks under dynamo is tested on CPU; capture, replay and in-place cache writes are not),
flash SDPA in prefill, that the remaining syncs are the only ones `torch.cuda.set_sync_debug_mode`
would report, and any speed-up.

Left out: paged attention, compiling the prefill and the speculative verify pass.
"""

from __future__ import annotations

from typing import Callable, Sequence as Seq

import torch

from fastrlhf.errors import UserError
from fastrlhf.model.decoder import CausalLM
from fastrlhf.rollout.kv_cache import DecodeView, KVCache, PrefillView
from fastrlhf.rollout.sampler import SamplingParams, sample, uniforms
from fastrlhf.rollout.scheduler import Scheduler
from fastrlhf.rollout.sequence import Sequence


def sequence_seed(seed: int, prompt_index: int, sample_index: int) -> int:
    """Default per-sequence seed: distinct for every (prompt, sample) of a call, fixed by `seed`."""
    return (seed * 1_000_003 + prompt_index) * 1_009 + sample_index


def default_compiler(device: torch.device) -> Callable:
    """How `compile=True` wraps the static decode step by default. CUDA: `torch.compile(mode=
    "reduce-overhead", dynamic=False)` — inductor kernels replayed as one CUDA graph per step (the
    KV cache tensors are marked static addresses so the graph may write them in place). Elsewhere:
    `torch.compile(dynamic=False)`."""
    if torch.device(device).type == "cuda":
        return lambda fn: torch.compile(fn, mode="reduce-overhead", dynamic=False)
    return lambda fn: torch.compile(fn, dynamic=False)


class RolloutEngine:
    def __init__(self, model: CausalLM, num_slots: int = 64, compile: bool = False, max_prefill_tokens: int | None = None,
                 speculator=None, compiler: Callable | None = None):
        """`num_slots`: the most sequences decoded at once (a call with fewer sequences gets a
        smaller cache). `compile`: decode with the static-shape step over all slots
        (`_decode_static`), wrapped by `compiler` — by default `default_compiler(device)`; an
        identity runs the same static step eagerly (tests do, to avoid cold compiles)."""
        self.model = model
        self.speculator = speculator  # e.g. speculative.verify.Speculator: replaces the one-token decode
        self.num_slots = num_slots
        self.max_prefill_tokens = max_prefill_tokens
        param = next(model.parameters())
        self.device, self.dtype = param.device, param.dtype
        self.policy_version = 0
        self.cache: KVCache | None = None
        self.compile = compile
        # compiled decode runs every slot at full cache length: static shapes, one compile per cache size
        self._static_decode = (compiler or default_compiler(self.device))(self._decode_all_slots) if compile else None
        self._cuda_graphs = compile and compiler is None and self.device.type == "cuda"
        self._reset_state()

    # ------------------------------------------------------------------ public API
    @torch.no_grad()
    def generate(self, prompts: Seq[Seq[int]], params: SamplingParams, seeds: Seq[int] | None = None,
                 on_step: Callable[[int, int], None] | None = None) -> list[Sequence]:
        """n samples for each prompt → finished sequences ordered by (prompt, sample).

        `seeds[i]` (optional) fixes prompt i's random stream, so its samples do not depend on the
        other prompts of the call. `on_step(finished, total)` is called after every engine step.
        The KV cache is released when the call returns (kept in compile mode, see `release`)."""
        try:
            seqs = self.start(prompts, params, seeds)
            while not self.scheduler.done:
                self.step()
                if on_step:
                    on_step(len(self.finished), len(seqs))
        finally:
            if not self.compile:
                self.release()
        return sorted(self.finished, key=lambda s: (s.prompt_index, s.sample_index))

    def release(self) -> None:
        """Free the KV cache and the per-slot state, so training does not sit next to a dead cache.
        `generate` does this itself when it returns, except in compile mode: the compiled step is
        specialised to one cache (shape and, with CUDA graphs, address), so the cache is kept and
        re-used by every call it is big enough for; call this to free it anyway (the next call
        allocates a new cache and recompiles / re-records)."""
        self.cache = None
        self._reset_state()

    def start(self, prompts: Seq[Seq[int]], params: SamplingParams, seeds: Seq[int] | None = None) -> list[Sequence]:
        if not prompts:
            raise UserError("generate: no prompts")
        if any(len(p) == 0 for p in prompts):
            raise UserError("generate: empty prompt (a prompt needs at least one token, e.g. BOS)")
        self.params = params
        seqs = []
        for i, prompt in enumerate(prompts):
            for j in range(params.n):
                seed = sequence_seed(params.seed if seeds is None else seeds[i], i if seeds is None else 0, j)
                seqs.append(Sequence(len(seqs), [int(t) for t in prompt], i, j, seed))
        self._allocate(len(seqs), max(len(p) for p in prompts) + params.max_new_tokens)
        self.scheduler = Scheduler(self.cache.num_slots, self.max_prefill_tokens)
        for seq in seqs:
            self.scheduler.add(seq)
        self.finished: list[Sequence] = []
        if self.speculator is not None:
            self.speculator.begin()
        self.stop_ids = self._to_device(list(params.stop_token_ids or [-1]))
        return seqs

    def step(self) -> None:
        """Admit and prefill waiting sequences, then decode one token for every running sequence."""
        admitted = self.scheduler.admit()
        if admitted:
            self._prefill(admitted)
        decoding = [s for s in self.scheduler.active_slots() if s not in self._just_admitted]
        self._just_admitted = set()
        if decoding:
            self._decode(decoding)

    # ------------------------------------------------------------------ the ladder
    def _reset_state(self) -> None:
        """Drop the per-slot state tensors (they belong to one cache)."""
        self.lengths = self.last_token = self.n_generated = self.seeds = None
        self.out_tokens = self.out_logprobs = None
        self._positions = None
        self._host_lengths_list: list[int] = []
        self._lengths_stale = False
        self._active_key: tuple[int, ...] | None = None
        self._active_slots: torch.Tensor | None = None
        self._just_admitted: set[int] = set()

    def _allocate(self, num_seqs: int, max_len: int) -> None:
        """A cache for this call: min(num_slots, sequences) slots × (longest prompt + max_new_tokens)
        positions. Compile mode always uses num_slots slots and re-uses its cache when it is big
        enough (positions only grow), so the compiled step keeps one shape."""
        max_pos = self.model.config.max_position_embeddings
        if max_len > max_pos:
            raise UserError(f"prompt + max_new_tokens = {max_len} exceeds the model's max_position_embeddings {max_pos}")
        slots = self.num_slots if self.compile else min(self.num_slots, num_seqs)
        reuse = self.compile and self.cache is not None and self.cache.num_slots >= slots and self.cache.max_len >= max_len
        if not reuse:
            if self.compile and self.cache is not None:
                max_len = max(max_len, self.cache.max_len)
            self.cache = None  # free the old cache before allocating the new one
            self.cache = KVCache(self.model.config, slots, max_len, self.dtype, self.device)
            if self.compile and self.device.type == "cuda":  # the compiled step writes them in place
                for t in self.cache.k + self.cache.v:
                    torch._dynamo.mark_static_address(t)
        self._reset_state()
        L = self.cache.max_len
        self.model.model.rotary.ensure(L)
        S, dev = self.cache.num_slots, self.device
        self.lengths = torch.zeros(S, dtype=torch.long, device=dev)  # tokens stored in the slot's cache
        self.last_token = torch.zeros(S, dtype=torch.long, device=dev)  # next token to feed
        self.n_generated = torch.zeros(S, dtype=torch.long, device=dev)
        self.seeds = torch.zeros(S, dtype=torch.long, device=dev)
        max_new = self.params.max_new_tokens
        self.out_tokens = torch.zeros(S, max_new, dtype=torch.long, device=dev)
        self.out_logprobs = torch.zeros(S, max_new, dtype=torch.float32, device=dev)
        self._positions = torch.arange(L, device=dev)  # 0 .. max_len − 1, sliced by every step
        # `lengths` mirrored on the host: set at admission, +1 per token the engine appends itself.
        # A speculator's `append` (device slots) makes it stale; the next read re-copies it (one sync)
        self._host_lengths_list = [0] * S

    def _host_lengths(self) -> list[int]:
        """Every slot's length on the host; re-copied from the device (one sync) only after a
        speculator's `append`, whose slots the host does not know."""
        if self._lengths_stale:
            self._host_lengths_list = self.lengths.tolist()
            self._lengths_stale = False
        return self._host_lengths_list

    def _to_device(self, data) -> torch.Tensor:
        """int64 host data → device. CUDA: through pinned memory, non-blocking (a pageable copy would
        wait for the queued GPU work)."""
        t = torch.tensor(data, dtype=torch.long)
        if self.device.type == "cuda":
            return t.pin_memory().to(self.device, non_blocking=True)
        return t.to(self.device)

    def _slots_tensor(self, active: list[int]) -> torch.Tensor:
        """`active` on the device; re-sent only when the running set changed (admission, finish)."""
        key = tuple(active)
        if key != self._active_key:
            self._active_key, self._active_slots = key, self._to_device(active)
        return self._active_slots

    def _prefill(self, seqs: list[Sequence]) -> None:
        """Run each distinct prompt once, copy its KV to every slot that holds it, sample token 0.

        Rows are right-padded and start at position 0, so attention is plain causal (`masks=None`:
        SDPA `is_causal`, flash kernels on CUDA); padded positions' K/V lands at dead positions
        ≥ the slot's length (cache invariant). All index data goes to the device in one copy."""
        rows: dict[tuple[int, ...], int] = {}
        src = [rows.setdefault(tuple(s.prompt_ids), len(rows)) for s in seqs]
        unique = list(rows)
        N, M = len(unique), len(seqs)
        lens = [len(p) for p in unique]
        T = max(lens)
        ids = self._to_device([list(p) + [0] * (T - len(p)) for p in unique])  # [N, T]
        slot_list = [s.slot for s in seqs]
        index = self._to_device(slot_list + src + [lens[r] for r in src] + [s.seed for s in seqs]
                                + [r * T + n - 1 for r, n in enumerate(lens)])
        slots, src_rows, seq_lens, seeds, last_rows = index.split([M, M, M, M, N])
        positions = self._positions[:T].expand(N, T)
        hidden = self.model.hidden_states(ids, positions, None, PrefillView(self.cache, slots, src_rows, T))
        last = hidden.reshape(N * T, -1)[last_rows]  # [N, d]: each row's last real position
        logits = self.model.logits(last)[src_rows]  # [M, V]
        for s in seqs:
            s.policy_version = self.policy_version
            self._host_lengths_list[s.slot] = s.prompt_len
        self.lengths[slots] = seq_lens
        self.n_generated[slots] = 0
        self.seeds[slots] = seeds
        self._just_admitted = set(slot_list)
        self._sample_and_commit(slots, logits)

    def _decode_logits(self, tokens, positions, masks, view):
        """One decoder step: tokens, positions [B, 1] → logits [B, V]."""
        hidden = self.model.hidden_states(tokens, positions, masks, view)
        return self.model.logits(hidden[:, 0])

    def _decode_all_slots(self, tokens: torch.Tensor, positions: torch.Tensor, span_positions: torch.Tensor) -> torch.Tensor:
        """Static-shape decode over all slots (for torch.compile / CUDA graphs): tokens, positions [S]
        → logits [S, V]. Device ops only: no host sync, no host tensor (it runs inside the graph)."""
        S = tokens.shape[0]
        key_positions = span_positions.expand(S, -1)
        masks = self.model.masks_for(positions[:, None], key_positions, torch.ones_like(key_positions, dtype=torch.bool))
        view = DecodeView(self.cache, torch.arange(S, device=tokens.device), positions, self.cache.max_len, contiguous=True)
        return self._decode_logits(tokens[:, None], positions[:, None], masks, view)

    def _decode(self, active: list[int]) -> None:
        if self.speculator is not None:
            return self.speculator.decode(self, active)
        return self.decode_one(active)

    def decode_one(self, active: list[int]) -> None:
        """Plain decoding: one new token for every running sequence. Host syncs: the stop check in
        `_commit` only (the span comes from the host's copy of the lengths; the slots tensor is
        re-sent only when the running set changed)."""
        if self.compile:
            return self._decode_static(active)
        slots = self._slots_tensor(active)
        host = self._host_lengths()
        span = max(host[s] for s in active) + 1
        positions = self.lengths[slots]  # [B] where the fed token goes
        key_positions = self._positions[:span].expand(len(active), span)
        q_positions = positions[:, None]
        masks = self.model.masks_for(q_positions, key_positions, torch.ones_like(key_positions, dtype=torch.bool))
        view = DecodeView(self.cache, slots, positions, span, contiguous=active[-1] == len(active) - 1)
        logits = self._decode_logits(self.last_token[slots][:, None], q_positions, masks, view)
        self._sample_and_append(slots, logits, active)

    def _decode_static(self, active: list[int]) -> None:
        """One decode step over ALL slots at static shapes (one compiled graph for the whole run);
        only the `active` slots' logits are used."""
        slots = self._slots_tensor(active)
        if self._cuda_graphs:
            torch.compiler.cudagraph_mark_step_begin()  # the previous step's graph outputs are dead
        logits = self._static_decode(self.last_token.clone(), self._static_write_positions(), self._positions[None])[slots]
        self._sample_and_append(slots, logits, active)

    def _static_write_positions(self) -> torch.Tensor:
        """Where each slot's fed token is written in a static step: at the slot's own length, the
        first dead position (cache invariant), for every slot — running or not. A running slot
        writes its real next K/V there; a slot prefilled in this step (or a free one) writes a
        position that nothing reads before its own next decode rewrites it, so no slot's live K/V
        [0, length) is ever touched. The clamp keeps a free slot's stale length inside its own rows
        (it is a no-op for running slots, whose length is < max_len). Device ops only, no sync."""
        return self.lengths.clamp(max=self.cache.max_len - 1)

    def _sample_and_append(self, slots: torch.Tensor, logits: torch.Tensor, active: list[int]) -> None:
        """Sample each slot's next token from `logits` [B, V] and append it (one-token decode)."""
        tokens, logprobs = sample(logits, self.params, uniforms(self.seeds[slots], self.n_generated[slots]))
        self._append(slots, tokens, logprobs, active)

    def _sample_and_commit(self, slots: torch.Tensor, logits: torch.Tensor) -> None:
        """Sample each slot's first token after prefill (its length is already the prompt's)."""
        tokens, logprobs = sample(logits, self.params, uniforms(self.seeds[slots], self.n_generated[slots]))
        self._commit(slots, tokens, logprobs)

    def _append(self, slots: torch.Tensor, tokens: torch.Tensor, logprobs: torch.Tensor, host_slots: list[int] | None) -> torch.Tensor:
        """`append`, keeping the host lengths exact when the caller knows the slots on the host."""
        self.lengths[slots] += 1
        if host_slots is None or self._lengths_stale:
            self._lengths_stale = True
        else:
            host = self._host_lengths_list
            for s in host_slots:
                host[s] += 1
        return self._commit(slots, tokens, logprobs)

    def _commit(self, slots: torch.Tensor, tokens: torch.Tensor, logprobs: torch.Tensor) -> torch.Tensor:
        """Record one new token per slot; finish sequences that stopped or are full. Returns done [B].
        One host sync (`done.any()`), plus one copy of the finished rows when some finished."""
        index = self.n_generated[slots]
        self.out_tokens[slots, index] = tokens
        self.out_logprobs[slots, index] = logprobs
        count = index + 1
        self.n_generated[slots] = count
        self.last_token[slots] = tokens
        stopped = (tokens[:, None] == self.stop_ids).any(-1)
        done = stopped | (count >= self.params.max_new_tokens)
        if bool(done.any()):
            rows = torch.cat([torch.stack([slots, stopped.long(), count], 1), self.out_tokens[slots]], 1)[done]
            for slot, was_stop, n, *out in rows.tolist():
                self._finish(slot, "stop" if was_stop else "length", out[:n])
        return done

    # ------------------------------------------------------------------ speculation interface
    # What a speculator (speculative/verify.py, strategy.py, draft_model.py) may read and do. Slots
    # are those of running sequences unless a method says otherwise; `slots` tensors are on `device`.
    # Besides these a speculator reads the public attributes `device` and `params` and may call
    # `decode_one` (a plain step).
    def running_sequences(self, active: list[int]) -> list[Sequence]:
        """The sequences running in the slots `active`, in that order."""
        return [self.scheduler.running[s] for s in active]

    def generated_tokens(self, slot: int) -> list[int]:
        """The tokens the sequence in `slot` has generated so far (its context minus the prompt)."""
        seq = self.scheduler.running.get(slot)
        # a running sequence has generated length − prompt + 1 tokens (the first came from prefill)
        n = self._host_lengths()[slot] - seq.prompt_len + 1 if seq is not None else int(self.n_generated[slot])
        return self.out_tokens[slot, :n].tolist()

    def output_tokens(self, slots: list[int], indices: list[int]) -> list[int]:
        """Token number `indices[i]` of the output in `slots[i]`; also valid for a sequence that
        finished in the current step (until its slot is admitted again)."""
        return self.out_tokens[slots, indices].tolist()

    def next_tokens(self, slots: torch.Tensor) -> torch.Tensor:
        """[B] each slot's last committed token: the next one to feed (its K/V is not stored yet)."""
        return self.last_token[slots]

    def sampling_state(self, slots: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """([B] seeds, [B] tokens generated so far): the counter-based stream of each slot, and the
        counter of its next token's uniform (sampler.uniforms)."""
        return self.seeds[slots], self.n_generated[slots]

    def cache_size(self) -> tuple[int, int]:
        """(slots, positions per slot) of the KV cache of the current generate call."""
        return self.cache.num_slots, self.cache.max_len

    def verify_forward(self, slots: torch.Tensor, fed: torch.Tensor, contiguous: bool) -> torch.Tensor:
        """Feed fed[b] [B, T] at positions length_b .. length_b + T − 1 of slot b in one forward →
        logits [B, T, V]. The fed tokens' K/V is written at those (dead) positions; the lengths do
        not move — `append` makes a fed token live. Padding positions past the cache are clamped
        into the row's own slot. `contiguous`: slots are exactly 0..B−1 (read a view, no gather).
        The key span is bounded on the host by the longest running sequence (keys past a query's
        position are masked), so no sync — except one re-copy of the lengths after `append`s."""
        T, L = fed.shape[1], self.cache.max_len
        positions = (self.lengths[slots][:, None] + self._positions[:T]).clamp(max=L - 1)  # [B, T]
        host = self._host_lengths()
        span = min(max(host[s] for s in self.scheduler.running) + T, L)
        key_positions = self._positions[:span].expand(fed.shape[0], span)
        masks = self.model.masks_for(positions, key_positions, torch.ones_like(key_positions, dtype=torch.bool))
        hidden = self.model.hidden_states(fed, positions, masks, DecodeView(self.cache, slots, positions, span, contiguous))
        return self.model.logits(hidden)

    def append(self, slots: torch.Tensor, tokens: torch.Tensor, logprobs: torch.Tensor) -> torch.Tensor:
        """One step of each slot's sequence: the token fed at its next position (K/V written by the
        last forward) becomes live, and `tokens` / `logprobs` [B] are recorded as its next output.
        Sequences that stop or are full finish (their slot is freed). Returns done [B]."""
        return self._append(slots, tokens, logprobs, None)

    def _finish(self, slot: int, reason: str, token_ids: list[int]) -> None:
        seq = self.scheduler.release(slot)
        seq.token_ids = token_ids
        seq.logprobs = self.out_logprobs[slot, : len(token_ids)].clone()
        seq.finish_reason = reason
        self._just_admitted.discard(slot)
        self.finished.append(seq)
