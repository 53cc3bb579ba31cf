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

Left out: CUDA graphs, paged attention.
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


class RolloutEngine:
    def __init__(self, model: CausalLM, num_slots: int = 64, compile: bool = False, max_prefill_tokens: int | None = None,
                 speculator=None, compiler: Callable | None = None):
        """`compile`: decode with the static-shape step over all slots (`_decode_static`), wrapped by
        `compiler` — by default `torch.compile(dynamic=False)`; an identity runs the same static step
        eagerly (tests do, to avoid cold compiles)."""
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
        compiler = compiler or (lambda fn: torch.compile(fn, dynamic=False))
        self._static_decode = compiler(self._decode_all_slots) if compile else None

    # ------------------------------------------------------------------ public API
    @torch.no_grad()
    def generate(self, prompts: Seq[Seq[int]], params: SamplingParams, seeds: Seq[int] | None = None,
                 on_step: Callable[[int, int], None] | None = None) -> list[Sequence]:
        """n samples for each prompt → finished sequences ordered by (prompt, sample).

        `seeds[i]` (optional) fixes prompt i's random stream, so its samples do not depend on the
        other prompts of the call. `on_step(finished, total)` is called after every engine step."""
        seqs = self.start(prompts, params, seeds)
        while not self.scheduler.done:
            self.step()
            if on_step:
                on_step(len(self.finished), len(seqs))
        return sorted(self.finished, key=lambda s: (s.prompt_index, s.sample_index))

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
        self._allocate(max(len(p) for p in prompts) + params.max_new_tokens)
        self.scheduler = Scheduler(self.num_slots, self.max_prefill_tokens)
        for seq in seqs:
            self.scheduler.add(seq)
        self.finished: list[Sequence] = []
        if self.speculator is not None:
            self.speculator.begin()
        self.stop_ids = torch.tensor(params.stop_token_ids or [-1], device=self.device)
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
    def _allocate(self, max_len: int) -> None:
        max_pos = self.model.config.max_position_embeddings
        if max_len > max_pos:
            raise UserError(f"prompt + max_new_tokens = {max_len} exceeds the model's max_position_embeddings {max_pos}")
        if self.cache is None or self.cache.max_len < max_len:
            self.cache = KVCache(self.model.config, self.num_slots, max_len, self.dtype, self.device)
            self.model.model.rotary.ensure(max_len)
        S, dev = self.num_slots, self.device
        self.lengths = torch.zeros(S, dtype=torch.long, device=dev)  # tokens stored in the slot's cache
        self.last_token = torch.zeros(S, dtype=torch.long, device=dev)  # next token to feed
        self.n_generated = torch.zeros(S, dtype=torch.long, device=dev)
        self.seeds = torch.zeros(S, dtype=torch.long, device=dev)
        max_new = self.params.max_new_tokens
        self.out_tokens = torch.zeros(S, max_new, dtype=torch.long, device=dev)
        self.out_logprobs = torch.zeros(S, max_new, dtype=torch.float32, device=dev)
        self._just_admitted: set[int] = set()

    def _prefill(self, seqs: list[Sequence]) -> None:
        """Run each distinct prompt once, copy its KV to every slot that holds it, sample token 0."""
        rows: dict[tuple[int, ...], int] = {}
        src = [rows.setdefault(tuple(s.prompt_ids), len(rows)) for s in seqs]
        unique = list(rows)
        lens = torch.tensor([len(p) for p in unique], device=self.device)
        T = int(lens.max())
        ids = torch.zeros(len(unique), T, dtype=torch.long, device=self.device)
        for r, p in enumerate(unique):
            ids[r, : len(p)] = torch.tensor(p)
        positions = torch.arange(T, device=self.device).expand(len(unique), T)
        masks = self.model.masks_for(positions, positions, positions < lens[:, None])
        slots = torch.tensor([s.slot for s in seqs], device=self.device)
        src_rows = torch.tensor(src, device=self.device)
        hidden = self.model.hidden_states(ids, positions, masks, PrefillView(self.cache, slots, src_rows, T))
        last = hidden[torch.arange(len(unique), device=self.device), lens - 1]  # [N, d]
        logits = self.model.logits(last)[src_rows]  # [M, V]
        for s in seqs:
            s.policy_version = self.policy_version
        self.lengths[slots] = lens[src_rows]
        self.n_generated[slots] = 0
        self.seeds[slots] = torch.tensor([s.seed for s in seqs], device=self.device)
        self._just_admitted = {s.slot for s in seqs}
        self._sample_and_commit(slots, logits)

    def _decode_logits(self, tokens, positions, masks, view):
        """One decoder step: tokens, positions [B, 1] → logits [B, V]."""
        hidden = self.model.hidden_states(tokens, positions, masks, view)
        return self.model.logits(hidden[:, 0])

    def _decode_all_slots(self, tokens: torch.Tensor, positions: torch.Tensor, span_positions: torch.Tensor) -> torch.Tensor:
        """Static-shape decode over all slots (for torch.compile): tokens, positions [S] → logits [S, V]."""
        S = tokens.shape[0]
        key_positions = span_positions.expand(S, -1)
        masks = self.model.masks_for(positions[:, None], key_positions, torch.ones_like(key_positions, dtype=torch.bool))
        view = DecodeView(self.cache, torch.arange(S, device=self.device), positions, self.cache.max_len, contiguous=True)
        return self._decode_logits(tokens[:, None], positions[:, None], masks, view)

    def _decode(self, active: list[int]) -> None:
        if self.speculator is not None:
            return self.speculator.decode(self, active)
        return self.decode_one(active)

    def decode_one(self, active: list[int]) -> None:
        """Plain decoding: one new token for every running sequence."""
        if self.compile:
            return self._decode_static(active)
        slots = torch.tensor(active, device=self.device)
        positions = self.lengths[slots]  # [B] where the fed token goes
        span = int(positions.max()) + 1
        key_positions = torch.arange(span, device=self.device).expand(len(active), span)
        q_positions = positions[:, None]
        masks = self.model.masks_for(q_positions, key_positions, torch.ones_like(key_positions, dtype=torch.bool))
        view = DecodeView(self.cache, slots, positions, span, contiguous=active[-1] == len(active) - 1)
        logits = self._decode_logits(self.last_token[slots][:, None], q_positions, masks, view)
        self._sample_and_append(slots, logits)

    def _decode_static(self, active: list[int]) -> None:
        """One decode step over ALL slots at static shapes (one compiled graph for the whole run);
        only the `active` slots' logits are used."""
        slots = torch.tensor(active, device=self.device)
        span_positions = torch.arange(self.cache.max_len, device=self.device)[None]
        logits = self._static_decode(self.last_token.clone(), self._static_write_positions(), span_positions)[slots]
        self._sample_and_append(slots, logits)

    def _static_write_positions(self) -> torch.Tensor:
        """Where each slot's fed token is written in a static step: at the slot's own length, the
        first dead position (cache invariant), for every slot — running or not. A running slot
        writes its real next K/V there; a slot prefilled in this step (or a free one) writes a
        position that nothing reads before its own next decode rewrites it, so no slot's live K/V
        [0, length) is ever touched. The clamp keeps a free slot's stale length inside its own rows
        (it is a no-op for running slots, whose length is < max_len). Device ops only, no sync."""
        return self.lengths.clamp(max=self.cache.max_len - 1)

    def _sample_and_append(self, slots: torch.Tensor, logits: torch.Tensor) -> None:
        """Sample each slot's next token from `logits` [B, V] and append it (one-token decode)."""
        tokens, logprobs = sample(logits, self.params, uniforms(self.seeds[slots], self.n_generated[slots]))
        self.append(slots, tokens, logprobs)

    def _sample_and_commit(self, slots: torch.Tensor, logits: torch.Tensor) -> None:
        """Sample each slot's first token after prefill (its length is already the prompt's)."""
        tokens, logprobs = sample(logits, self.params, uniforms(self.seeds[slots], self.n_generated[slots]))
        self._commit(slots, tokens, logprobs)

    def _commit(self, slots: torch.Tensor, tokens: torch.Tensor, logprobs: torch.Tensor) -> torch.Tensor:
        """Record one new token per slot; finish sequences that stopped or are full. Returns done [B]."""
        index = self.n_generated[slots]
        self.out_tokens[slots, index] = tokens
        self.out_logprobs[slots, index] = logprobs
        self.n_generated[slots] += 1
        self.last_token[slots] = tokens
        stopped = torch.isin(tokens, self.stop_ids)
        full = self.n_generated[slots] >= self.params.max_new_tokens
        done = stopped | full
        if bool(done.any()):
            for slot, was_stop in zip(slots[done].tolist(), stopped[done].tolist()):
                self._finish(slot, "stop" if was_stop else "length")
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
        return self.out_tokens[slot, : int(self.n_generated[slot])].tolist()

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
        into the row's own slot. `contiguous`: slots are exactly 0..B−1 (read a view, no gather)."""
        positions = self.lengths[slots][:, None] + torch.arange(fed.shape[1], device=self.device)  # [B, T]
        positions = positions.clamp(max=self.cache.max_len - 1)
        span = int(positions.max()) + 1
        key_positions = torch.arange(span, device=self.device).expand(fed.shape[0], span)
        masks = self.model.masks_for(positions, key_positions, torch.ones_like(key_positions, dtype=torch.bool))
        hidden = self.model.hidden_states(fed, positions, masks, DecodeView(self.cache, slots, positions, span, contiguous))
        return self.model.logits(hidden)

    def append(self, slots: torch.Tensor, tokens: torch.Tensor, logprobs: torch.Tensor) -> torch.Tensor:
        """One step of each slot's sequence: the token fed at its next position (K/V written by the
        last forward) becomes live, and `tokens` / `logprobs` [B] are recorded as its next output.
        Sequences that stop or are full finish (their slot is freed). Returns done [B]."""
        self.lengths[slots] += 1
        return self._commit(slots, tokens, logprobs)

    def _finish(self, slot: int, reason: str) -> None:
        seq = self.scheduler.release(slot)
        n = int(self.n_generated[slot])
        seq.token_ids = self.out_tokens[slot, :n].tolist()
        seq.logprobs = self.out_logprobs[slot, :n].clone()
        seq.finish_reason = reason
        self._just_admitted.discard(slot)
        self.finished.append(seq)
