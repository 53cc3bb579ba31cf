"""The rollout engine: batched generation over a slotted KV cache with continuous admission.

Generation is a ladder of small functions (gpt-fast style):
    sample (sampler.py) → _prefill (admitted prompts, once per distinct prompt) → _decode (one token
    for every running slot) → _commit (record tokens, finish sequences) → step → generate.
`step()` admits waiting sequences into free slots, prefills them, then decodes one token for every
running sequence. All per-token work is tensor ops over the batch; Python touches a sequence only
when it is admitted, finishes, or migrates.

Sample migration (between engines with the same weights and sampling params, e.g. a pool balancing
its workers): between two `step()`s, `take` removes unfinished sequences — waiting, or running with
their tokens and log-probs so far — and `add` queues them into another started engine (`start` with
`reserve=` sizes a worker's cache for sequences it will only receive). A partly generated sequence
moves in one of two modes (RLHFSpec's: the caller's cost model picks, e.g. runtime/pool.py's
`MigrationCost`):
- *re-prefill* (tokens only, the default): on admission its prompt + tokens so far but the last go
  through `_prefill` with no sampling, its outputs are restored into its slot, and its next decode
  feeds its last token. Costs one prefill of prompt + tokens so far on the destination; moves
  ~12 bytes per token (id, log-prob).
- *KV* (`take(with_kv=True)`): it also carries its slot's live K/V rows [0, prompt + generated − 1)
  as one CPU tensor `Sequence.kv` [layers, 2, length, kv_heads, head_dim] in the cache dtype
  (sequence.py). On admission `_write_kv` copies them into its new slot — no forward pass — and sets
  the same state the re-prefill path sets. Moves length × `kv_bytes_per_token()` bytes (2 × layers ×
  kv_heads × head_dim × dtype bytes per token, `ModelConfig.kv_bytes_per_token`); the K/V is
  bitwise the source's. `add` checks it against this cache (layers, kv heads, head dim, dtype) and
  the sequence's length before queueing anything.
One admission may mix fresh, re-prefilled and KV sequences. Randomness is counter-based (seed, token
index), so a migrated sequence samples the same tokens it would have without moving (log-probs equal
up to fp32 reduction order: re-prefill runs its tokens in one causal pass instead of one decode step
each; with KV only the destination's decode batch differs). `load()` is what a pool balances on.
Identity: `start(keys=)` names the prompts (`prompt_index`; seq_id = key · n + sample; the default
seed); a pool that gives each prompt its own key gets seq_ids unique across its engines.

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
A slot freed by `take` is like one freed by a finish: its old K/V is dead for the next admission,
whose (re-)prefill rewrites [0, fed length) — or whose carried K/V is written to [0, its length) —
and sets the slot's length, counters and seed; `take(with_kv=True)` copies only [0, length).

The decode hot path, written for a GPU:
- host syncs: one per plain decode step, the stop check in `_commit` (`done.any()`), plus one copy
  of the finished rows when a sequence ends. The key span comes from the host's copy of the slot
  lengths (fed length at admission + tokens appended), the active-slots tensor is re-sent only
  when the running set changes, and host → device copies go through pinned memory, non-blocking.
  A speculative pass re-copies the lengths once after the speculator's `append`s (device slots),
  as `verify_forward`'s `positions.max()` did before. (The decoder's `Rotary.forward` still reads
  `positions.max()` in eager mode — decoder.py, outside this package; it is skipped inside a
  compiled graph.)
- sampling math is fp32 whatever the model dtype (bf16 policies decode with a bf16 KV cache);
- prefill runs causal attention (`masks=None`: SDPA `is_causal`, flash kernels on CUDA);
- the KV cache is sized per generate call (min(num_slots, sequences) slots × longest prompt +
  max_new_tokens, at least `reserve=` when given) and released when the call returns
  (`release()`), except in compile mode (num_slots slots, re-used by every call it is big enough
  for: one compiled shape);
- `compile=True` on CUDA: the static all-slots decode step is compiled with
  `mode="reduce-overhead"` (CUDA graphs), the cache tensors marked static addresses.

Unverified without a GPU (written so, not measured or run): CUDA-graph capture of the static step
(no graph breaks under dynamo is tested on CPU; capture, replay and in-place cache writes are not),
flash SDPA in prefill, that the remaining syncs are the only ones `torch.cuda.set_sync_debug_mode`
would report, and any speed-up.

Left out: paged attention, compiling the prefill and the speculative verify pass; for migration,
choosing the mode (the caller's cost model does), moving a speculator's drafter state with a sequence
(a drafter relearns the text of a sequence it has not seen from its context; the tokens do not depend
on it with a deterministic drafter), shipping K/V between caches of different dtypes or layouts
(refused; no conversion or quantisation), device-to-device copies (K/V goes through host memory: one
device → host copy at `take`, one pinned host → device copy at admission), a waiting sequence's K/V
(it has none unless it was added with some), and the transport between processes (sequences are
plain data: lists and CPU tensors).
"""

from __future__ import annotations

import itertools
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
        self.scheduler: Scheduler | None = None  # set by `start`
        self.finished: list[Sequence] = []
        self.compile = compile
        # compiled decode runs every slot at full cache length: static shapes, one compile per cache size
        self._static_decode = (compiler or default_compiler(self.device))(self._decode_all_slots) if compile else None
        self._cuda_graphs = compile and compiler is None and self.device.type == "cuda"
        self._reset_state()

    # ------------------------------------------------------------------ public API
    @torch.no_grad()
    def generate(self, prompts: Seq[Seq[int]], params: SamplingParams, seeds: Seq[int] | None = None,
                 on_step: Callable[[int, int], None] | None = None, keys: Seq[int] | None = None,
                 reserve: tuple[int, int] | None = None) -> list[Sequence]:
        """n samples for each prompt → finished sequences ordered by (prompt_index, sample_index).

        `seeds[i]` (optional) fixes prompt i's random stream, so its samples do not depend on the
        other prompts of the call; `keys` and `reserve` as in `start`. `on_step(finished, total)` is
        called after every engine step. The KV cache is released when the call returns (kept in
        compile mode, see `release`)."""
        try:
            seqs = self.start(prompts, params, seeds, keys, reserve)
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

    def start(self, prompts: Seq[Seq[int]], params: SamplingParams, seeds: Seq[int] | None = None,
              keys: Seq[int] | None = None, reserve: tuple[int, int] | None = None) -> list[Sequence]:
        """Queue n samples of each prompt and allocate the KV cache: a call that `step()` runs and
        that `take` / `add` move sequences out of and into.

        `keys[i]` (default i, distinct ints) is prompt i's identity: its sequences' `prompt_index`,
        their seq_id (key · n + sample) and, without `seeds`, their seed `sequence_seed(params.seed,
        key, sample)` — so a prompt's samples do not depend on its position in the call, and a pool
        that gives every prompt its own key gets seq_ids unique across its engines. With `seeds`,
        prompt i's seed is `sequence_seed(seeds[i], 0, sample)` whatever its key.
        `reserve=(slots, positions)`: the least cache this call allocates, for sequences `add`ed
        later (positions: the longest prompt + max_new_tokens they may bring; slots are capped at
        num_slots). With a reserve `prompts` may be empty: a worker that only receives migrated work."""
        if not prompts and reserve is None:
            raise UserError("generate: no prompts")
        if any(len(p) == 0 for p in prompts):
            raise UserError("generate: empty prompt (a prompt needs at least one token, e.g. BOS)")
        keys = self._check_keys(keys, len(prompts))
        reserve_slots, reserve_len = self._check_reserve(reserve)
        self.params = params
        seqs = []
        for i, (key, prompt) in enumerate(zip(keys, prompts)):
            for j in range(params.n):
                seed = sequence_seed(params.seed, key, j) if seeds is None else sequence_seed(seeds[i], 0, j)
                seqs.append(Sequence(key * params.n + j, [int(t) for t in prompt], key, j, seed))
        longest = max((len(p) for p in prompts), default=0)
        self._allocate(max(len(seqs), reserve_slots), max(longest + params.max_new_tokens, reserve_len))
        self.scheduler = Scheduler(self.cache.num_slots, self.max_prefill_tokens)
        for seq in seqs:
            self.scheduler.add(seq)
        self.finished: list[Sequence] = []
        if self.speculator is not None:
            self.speculator.begin()
        self.stop_ids = self._to_device(list(params.stop_token_ids or [-1]))
        return seqs

    @torch.no_grad()
    def take(self, seq_ids: Seq[int] | None = None, count: int | None = None, with_kv: bool = False) -> list[Sequence]:
        """Remove unfinished sequences from this engine (between two `step()`s) and return them.

        `seq_ids`: those sequences, in that order (an id that is finished or not here raises).
        `count`: up to that many, chosen so the work moved is the work still to do — waiting ones
        first (the last queued first, so the rest keep their order), then running ones with the
        fewest tokens generated (the most predicted work left: max_new_tokens − generated; ties: the
        highest slot, so the running set stays packed at the front of the cache). Neither: all.
        A taken running sequence frees its slot and carries its state so far: `token_ids` (list),
        `logprobs` (fp32 CPU, same length), `finish_reason` None, with its seed, prompt and indices;
        `add` on an engine with the same weights continues it (two device → host copies).
        `with_kv`: a taken running sequence also carries its slot's live K/V in `kv` (see
        sequence.py for the layout: [layers, 2, kv_len, kv_heads, head_dim], CPU, cache dtype;
        kv_len × `kv_bytes_per_token()` bytes; one more device → host copy for all of them), so the
        next engine writes it instead of re-prefilling. A waiting sequence carries none — unless it
        was added here with one and is not admitted yet: `with_kv` keeps that, without it is dropped
        (the sequence is then re-prefilled wherever it goes)."""
        self._require_started("take")
        if seq_ids is not None and count is not None:
            raise UserError("take: pass seq_ids or count, not both")
        here = self._unfinished()
        if seq_ids is not None:
            chosen = [self._unfinished_seq(int(i), here) for i in seq_ids]
            if len({s.seq_id for s in chosen}) < len(chosen):
                raise UserError(f"take: repeated sequence ids in {list(seq_ids)}")
        elif count is not None:
            chosen = self._pick(count, here)
        else:
            chosen = list(here.values())
        running = [s for s in chosen if s.slot is not None]
        self._snapshot(running)
        if with_kv:
            self._snapshot_kv(running)
        else:
            for seq in chosen:
                seq.kv = None
        for seq in chosen:
            self._just_admitted.discard(seq.slot)
        self.scheduler.withdraw(chosen)
        return chosen

    def kv_bytes_per_token(self) -> int:
        """Bytes of K/V one token of a sequence occupies in this engine's cache — what `take(with_kv=
        True)` moves per position: 2 × layers × kv_heads × head_dim × dtype bytes
        (`ModelConfig.kv_bytes_per_token`), e.g. for a pool's `MigrationCost`."""
        return self.model.config.kv_bytes_per_token(self.dtype.itemsize)

    @torch.no_grad()
    def add(self, seqs: Seq[Sequence]) -> None:
        """Queue sequences taken from an engine with the same weights and sampling params (after
        `start`; they wait behind the queue). A fresh one (no tokens) is prefilled and sampled as
        usual; a partly generated one (k ≥ 1 tokens) is re-prefilled at admission and continues with
        token k (see `_prefill`) — or, if it carries its K/V (`take(with_kv=True)`), admitted with no
        forward pass: the K/V is written into its slot (`_write_kv`) and it continues the same way.
        Everything is checked before anything is queued: a sequence that is finished, still in a
        slot, already in this engine, that cannot fit the cache (prompt + max_new_tokens > positions
        per slot), or whose `kv` does not match this engine's cache (layers, K/V, kv heads, head dim,
        dtype) or its own length (prompt + tokens − 1) raises. Its `policy_version` is kept (the
        weights are the same); seq ids must be unique in the engine (see `start`'s keys). A carried
        `kv` stays on the host until admission."""
        self._require_started("add")
        seqs = list(seqs)
        known = set(self._unfinished()) | {s.seq_id for s in self.finished}
        for seq in seqs:
            self._check_addable(seq, known)
            known.add(seq.seq_id)
        for seq in seqs:
            seq.token_ids = [int(t) for t in seq.token_ids]
            if seq.token_ids:
                seq.logprobs = seq.logprobs.detach().to("cpu", torch.float32)
            self.scheduler.add(seq)

    def load(self) -> dict:
        """What a pool balances on, from host-side data (one device copy of the lengths only after a
        speculator's `append`s): counts of waiting / running / finished sequences, free slots, and
        per unfinished sequence (waiting in queue order, then running by slot) its seq_id,
        prompt_index, sample_index, tokens generated so far, prompt length and whether it runs."""
        self._require_started("load")
        generated = self._generated_counts()
        seqs = [dict(seq_id=s.seq_id, prompt_index=s.prompt_index, sample_index=s.sample_index,
                     generated=generated[s.slot] if s.slot is not None else len(s.token_ids),
                     prompt_len=s.prompt_len, running=s.slot is not None) for s in self._unfinished().values()]
        sched = self.scheduler
        return dict(waiting=len(sched.waiting), running=len(sched.running), finished=len(self.finished),
                    free_slots=len(sched.free), slots=sched.num_slots, sequences=seqs)

    @torch.no_grad()
    def step(self) -> None:
        """Admit waiting sequences — prefill the fresh and re-prefilled ones, write the K/V of those
        that carry it — then decode one token for every running sequence (without autograd also
        when called directly, as a worker that migrates sequences does)."""
        admitted = self.scheduler.admit()
        fed = [s for s in admitted if s.kv is None]
        shipped = [s for s in admitted if s.kv is not None]
        if fed:
            self._prefill(fed)
        if shipped:
            self._write_kv(shipped)  # after `_prefill`: it resets the just-admitted set
        decoding = [s for s in self.scheduler.active_slots() if s not in self._just_admitted]
        self._just_admitted = set()
        if decoding:
            self._decode(decoding)

    # ------------------------------------------------------------------ migration helpers
    @staticmethod
    def _check_keys(keys: Seq[int] | None, count: int) -> list[int]:
        """`start`'s keys: default 0 .. count − 1; otherwise `count` distinct ints."""
        if keys is None:
            return list(range(count))
        keys = [int(k) for k in keys]
        if len(keys) != count:
            raise UserError(f"generate: {len(keys)} keys for {count} prompts")
        if len(set(keys)) != count:
            raise UserError("generate: keys must be distinct (a key is a prompt's identity)")
        return keys

    @staticmethod
    def _check_reserve(reserve: tuple[int, int] | None) -> tuple[int, int]:
        """`start`'s reserve → (slots, positions); (0, 0) when there is none."""
        if reserve is None:
            return 0, 0
        slots, positions = (int(x) for x in reserve)
        if slots < 1 or positions < 1:
            raise UserError(f"generate: reserve=(slots, positions) needs both ≥ 1, got {tuple(reserve)}")
        return slots, positions

    def _require_started(self, what: str) -> None:
        if self.scheduler is None or self.cache is None:
            raise UserError(f"{what}: the engine has no call running (call start first)")

    def _unfinished(self) -> dict[int, Sequence]:
        """seq_id → sequence for every unfinished one here: waiting in queue order, then running by slot."""
        sched = self.scheduler
        return {s.seq_id: s for s in [*sched.waiting, *(sched.running[k] for k in sorted(sched.running))]}

    def _unfinished_seq(self, seq_id: int, here: dict[int, Sequence]) -> Sequence:
        if seq_id in here:
            return here[seq_id]
        state = "finished" if any(s.seq_id == seq_id for s in self.finished) else "not in this engine"
        raise UserError(f"take: sequence {seq_id} is {state}")

    def _generated_counts(self) -> dict[int, int]:
        """slot → tokens generated so far by its running sequence (length − prompt + 1: the first
        token came from prefill), from the host's lengths."""
        host = self._host_lengths()
        return {slot: host[slot] - seq.prompt_len + 1 for slot, seq in self.scheduler.running.items()}

    def _pick(self, count: int, here: dict[int, Sequence]) -> list[Sequence]:
        """`take(count=)`'s rule: waiting (last queued first), then running by (generated, −slot)."""
        if count < 0:
            raise UserError(f"take: count must be ≥ 0, got {count}")
        waiting = list(reversed(self.scheduler.waiting))
        generated = self._generated_counts()
        running = sorted(self.scheduler.running.values(), key=lambda s: (generated[s.slot], -s.slot))
        return (waiting + running)[:count]

    def _snapshot(self, running: list[Sequence]) -> None:
        """Copy the running sequences' outputs so far out of their slots (two device → host copies)."""
        if not running:
            return
        slots = self._to_device([s.slot for s in running])
        rows = torch.cat([self.n_generated[slots, None], self.out_tokens[slots]], 1).tolist()
        logprobs = self.out_logprobs[slots].cpu()
        for i, (seq, (n, *out)) in enumerate(zip(running, rows)):
            seq.token_ids, seq.logprobs, seq.finish_reason = out[:n], logprobs[i, :n].clone(), None

    def _snapshot_kv(self, running: list[Sequence]) -> None:
        """Copy the running sequences' live K/V [0, kv_len) out of their slots (after `_snapshot`
        set their tokens): one gather per layer and K/V, one device → host copy, then one compact
        [layers, 2, kv_len, kv_heads, head_dim] tensor per sequence."""
        if not running:
            return
        slots = self._to_device([s.slot for s in running])
        lens = [s.kv_len for s in running]
        span = max(lens)
        kv = self.cache.gather(slots, span).cpu()  # [B, layers, 2, span, K, h]
        for i, (seq, n) in enumerate(zip(running, lens)):
            seq.kv = kv[i, :, :, :n].clone(memory_format=torch.contiguous_format)  # its own storage

    def _check_addable(self, seq: Sequence, known: set[int]) -> None:
        """Why `add` refuses `seq`, if it does (a UserError naming the sequence)."""
        name = f"add: sequence {seq.seq_id} (prompt {seq.prompt_index}, sample {seq.sample_index})"
        max_new, positions = self.params.max_new_tokens, self.cache.max_len
        k = len(seq.token_ids)
        if seq.finished:
            raise UserError(f"{name} is finished ({seq.finish_reason})")
        if seq.slot is not None:
            raise UserError(f"{name} still holds slot {seq.slot} of an engine (take it first)")
        if seq.seq_id in known:
            raise UserError(f"{name} is already in this engine (seq ids must be unique: see start's keys)")
        if not seq.prompt_ids:
            raise UserError(f"{name} has an empty prompt")
        if seq.prompt_len + max_new > positions:
            raise UserError(f"{name} cannot fit the cache: prompt {seq.prompt_len} + max_new_tokens {max_new} > "
                            f"{positions} positions per slot (start the engine with a larger reserve=)")
        if k >= max_new:
            raise UserError(f"{name} has {k} tokens, max_new_tokens is {max_new}: it would have finished")
        if k and (seq.logprobs is None or len(seq.logprobs) != k):
            raise UserError(f"{name} has {k} tokens but no log-prob for each")
        if set(seq.token_ids) & set(self.params.stop_token_ids):
            raise UserError(f"{name} contains a stop token: it would have finished")
        if seq.kv is not None:
            self._check_kv(seq, name)

    def _check_kv(self, seq: Sequence, name: str) -> None:
        """Why a carried `kv` cannot be written into this engine's cache, if it cannot."""
        kv, cfg = seq.kv, self.model.config
        if not isinstance(kv, torch.Tensor) or kv.dim() != 5:
            raise UserError(f"{name} carries kv that is not a [layers, 2, length, kv_heads, head_dim] tensor")
        if not seq.token_ids:
            raise UserError(f"{name} carries kv but no tokens (a fresh sequence is prefilled)")
        layers, two, length, heads, head_dim = kv.shape
        want = dict(layers=cfg.num_layers, kv_heads=cfg.num_kv_heads, head_dim=cfg.head_dim)
        for what, got in dict(layers=layers, kv_heads=heads, head_dim=head_dim).items():
            if got != want[what]:
                raise UserError(f"{name} carries kv with {got} {what}, this engine's cache has {want[what]}")
        if two != 2:
            raise UserError(f"{name} carries kv with {two} entries in dim 1, expected 2 (K and V)")
        if kv.dtype != self.dtype:
            raise UserError(f"{name} carries kv of dtype {kv.dtype}, this engine's cache is {self.dtype}")
        if length != seq.kv_len:
            raise UserError(f"{name} carries kv of length {length}, expected prompt {seq.prompt_len} + "
                            f"{len(seq.token_ids)} tokens − 1 = {seq.kv_len}")

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
        """Run each distinct fed token list once, copy its KV to every slot that holds it, and sample
        token 0 of the fresh sequences.

        A sequence feeds `prefill_ids`: its prompt, or — migrated with k ≥ 1 tokens — its prompt +
        token_ids[:k−1], which is re-prefilled with no sampling (`_restore`: its next decode feeds
        token k−1 and samples token k with counter k). Rows are deduplicated by the fed tokens (the
        n samples of a prompt share one row; K/V depends only on the tokens and their positions, so
        a fresh and a migrated sequence may share one too); only rows that end a fresh sequence's
        prompt go through the LM head. Rows are right-padded and start at position 0, so attention
        is plain causal (`masks=None`: SDPA `is_causal`, flash kernels on CUDA); padded positions'
        K/V lands at dead positions ≥ the slot's length (cache invariant). All index data goes to
        the device in one copy (plus one of the migrated log-probs)."""
        rows: dict[tuple[int, ...], int] = {}
        src = [rows.setdefault(tuple(s.prefill_ids), len(rows)) for s in seqs]
        unique = list(rows)
        N = len(unique)
        lens = [len(p) for p in unique]
        T = max(lens)
        ids = self._to_device([list(p) + [0] * (T - len(p)) for p in unique])  # [N, T]
        fresh = [s for s in seqs if not s.token_ids]
        moved = [s for s in seqs if s.token_ids]
        fresh_src = [r for r, s in zip(src, seqs) if not s.token_ids]
        heads = list(dict.fromkeys(fresh_src))  # rows whose last position predicts a fresh sequence's token 0
        head_of = {r: h for h, r in enumerate(heads)}
        parts = [[s.slot for s in seqs], src, [lens[r] for r in src], [s.seed for s in seqs],
                 [r * T + lens[r] - 1 for r in heads], [head_of[r] for r in fresh_src], [s.slot for s in fresh],
                 *self._restore_index(moved)]
        index = self._to_device([x for part in parts for x in part]).split([len(p) for p in parts])
        slots, src_rows, seq_lens, seeds, last_rows, fresh_heads, fresh_slots = index[:7]
        positions = self._positions[:T].expand(N, T)
        hidden = self.model.hidden_states(ids, positions, None, PrefillView(self.cache, slots, src_rows, T))
        for s in seqs:
            if not s.token_ids:
                s.policy_version = self.policy_version
            self._host_lengths_list[s.slot] = s.prefill_len
        self.lengths[slots] = seq_lens
        self.seeds[slots] = seeds
        self._just_admitted = {s.slot for s in fresh}  # migrated ones decode in this step already
        if moved:
            self._restore(moved, *index[7:])
        if fresh:
            last = hidden.reshape(N * T, -1)[last_rows]  # [H, d]: each head row's last real position
            logits = self.model.logits(last)[fresh_heads]  # [F, V]
            self.n_generated[fresh_slots] = 0
            self._sample_and_commit(fresh_slots, logits)

    def _write_kv(self, seqs: list[Sequence]) -> None:
        """Admit sequences that carry their K/V, with no forward pass: their rows go to positions
        [0, kv_len) of their new slots (one host → device copy of all of them, one `index_copy_` per
        layer and K/V), and their state is set as after a re-prefill (`_restore`): length kv_len,
        seed, outputs so far, next token to feed the last generated one — so they decode in this step,
        exactly as on the source engine. The carried `kv` is dropped once written."""
        L = self.cache.max_len
        lens = [s.kv_len for s in seqs]
        offsets = [0, *itertools.accumulate(lens)]
        total = offsets.pop()
        parts = [[s.slot for s in seqs], lens, [s.seed for s in seqs], [s.slot * L - o for s, o in zip(seqs, offsets)],
                 *self._restore_index(seqs)]
        index = self._to_device([x for part in parts for x in part]).split([len(p) for p in parts])
        slots, seq_lens, seeds, bases = index[:4]
        # flat storage row of every carried position: slot · max_len + j, j in [0, kv_len)
        rows = torch.repeat_interleave(bases, seq_lens, output_size=total) + torch.arange(total, device=self.device)
        data = torch.cat([s.kv for s in seqs], 2)  # [layers, 2, Σ kv_len, K, h]
        data = data.pin_memory().to(self.device, non_blocking=True) if self.device.type == "cuda" else data.to(self.device)
        self.cache.write(rows, data)
        self.lengths[slots] = seq_lens
        self.seeds[slots] = seeds
        for s, n in zip(seqs, lens):
            self._host_lengths_list[s.slot] = n
            s.kv = None
        self._restore(seqs, *index[4:])

    @staticmethod
    def _restore_index(moved: list[Sequence]) -> list[list[int]]:
        """Host index data of `_restore`: slots, token counts, last tokens, and (slot, column, token)
        for every restored output token."""
        flat = [(s.slot, j, t) for s in moved for j, t in enumerate(s.token_ids)]
        return [[s.slot for s in moved], [len(s.token_ids) for s in moved], [s.token_ids[-1] for s in moved],
                [f[0] for f in flat], [f[1] for f in flat], [f[2] for f in flat]]

    def _restore(self, moved: list[Sequence], slots, counts, last, out_slots, out_cols, out_tokens) -> None:
        """Migrated sequences' state after their re-prefill: outputs so far in their slots' rows, n
        generated = k, and token k−1 as the next one to feed (its K/V is not stored: the slot's length
        is prompt + k − 1), so the next decode samples token k with counter k."""
        logprobs = torch.cat([s.logprobs for s in moved]).to(self.device, torch.float32)
        self.out_tokens[out_slots, out_cols] = out_tokens
        self.out_logprobs[out_slots, out_cols] = logprobs
        self.n_generated[slots] = counts
        self.last_token[slots] = last

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
