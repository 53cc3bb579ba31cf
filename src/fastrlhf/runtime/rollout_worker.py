"""`RolloutWorker`: one rollout engine in its own process (a Ray actor), driven in rounds by the pool.

It holds the policy in the rollout precision, the engine (rollout/engine.py) and the speculator
(`rollout.speculative=ngram|off`), and receives its weights only through `load_weights` (versioned,
checksummed: runtime/weights.py). A generate call is a conversation with the pool
(runtime/rollout_pool.py) rather than one blocking call, so the pool can watch the load, move
in-flight sequences between workers and collect finished groups while the rest still generate:

    start(call, prompts, keys, params, version, reserve)   the worker's share of a step's prompts
    advance(call, seconds) -> finished, load, busy          engine steps for about `seconds`
    take(call, seq_ids) -> sequences                        give up unfinished sequences (migration)
    add(call, sequences)                                    continue sequences from another worker
    finish()                                          free the KV cache (the step's generation ended)

Ray runs an actor's methods one at a time, so a weight load can never interleave with an engine
step: a worker generates from exactly one version, and `start` refuses a version other than the
one it holds. Every call of a conversation carries its call id: a worker that Ray restarted meanwhile
(fresh process, no engine state) answers `WorkerRestarted` instead of a wrong result. Samples depend only on (step seed, prompt key, sample index, token position) —
sampler.uniforms — never on which worker draws them.

This module imports no Ray: the class is made a Ray actor by runtime/rollout_pool.py.
"""

from __future__ import annotations

import os
import time

import torch

from fastrlhf.config import config_from_dict
from fastrlhf.model.device import resolve_device
from fastrlhf.model.hf_io import load_model
from fastrlhf.rollout.engine import RolloutEngine
from fastrlhf.rollout.sampler import SamplingParams
from fastrlhf.runtime.weights import Bucket, WeightReceiver
from fastrlhf.train.build import make_speculation, model_directory


class WorkerRestarted(RuntimeError):
    """A call of a generate conversation reached a worker that Ray restarted since it began: the
    engine state of that conversation is gone (the pool re-runs the worker's sequences elsewhere)."""


class RolloutWorker:
    def __init__(self, config: dict, index: int, threads: int, rollout_dtype: str):
        """`rollout_dtype`: the trainer's rollout precision (e.g. "bfloat16"), decided once by trainer
        rank 0 so that every worker holds the weights in the same dtype."""
        torch.set_num_threads(threads)
        self.index = index
        self.config = config = config_from_dict(config)
        device = resolve_device(config.train.device, option="train.device")
        model = load_model(model_directory(config), device=device)  # shapes only: weights arrive by sync
        model = model.to(getattr(torch, rollout_dtype)).eval()
        r = config.rollout
        params = SamplingParams(temperature=r.temperature, top_p=r.top_p, top_k=r.top_k,
                                max_new_tokens=r.max_new_tokens, n=r.samples_per_prompt)
        self.speculation = make_speculation(config, model, params)
        self.engine = RolloutEngine(model, num_slots=r.num_slots, compile=r.compile,
                                    speculator=self.speculation.speculator)
        self.receiver = WeightReceiver(model, version=None)  # no version until the first sync
        self.pid = os.getpid()
        self.call_id: int | None = None  # the generate conversation this worker is in
        self.prefill_s_per_token = self._profile_prefill()

    # ------------------------------------------------------------------ weights
    def load_weights(self, version: int, buckets: list) -> float:
        """Version `version` from the object store (a list of ObjectRefs of `Bucket`s, or the buckets
        themselves); returns the seconds spent receiving, verifying and copying."""
        import ray

        started = time.perf_counter()
        if buckets and not isinstance(buckets[0], Bucket):
            buckets = ray.get(list(buckets))
        self.receiver.load(buckets, version)
        return time.perf_counter() - started

    def version(self) -> int | None:
        return self.receiver.version

    def info(self) -> dict:
        """What the pool needs to know about this worker, including its migration costs."""
        return {"pid": self.pid, "version": self.receiver.version, "index": self.index,
                "threads": torch.get_num_threads(), "kv_bytes_per_token": self.engine.kv_bytes_per_token(),
                "prefill_s_per_token": self.prefill_s_per_token}

    @torch.no_grad()
    def _profile_prefill(self, tokens: int = 64, repeats: int = 3) -> float:
        """Seconds per token of a one-sequence prefill (the re-prefill a migration without KV costs):
        median of `repeats` forwards of `tokens` positions (the weights do not change the time)."""
        model = self.engine.model
        tokens = min(tokens, model.config.max_position_embeddings)
        ids = torch.zeros(1, tokens, dtype=torch.long, device=self.engine.device)
        positions = torch.arange(tokens, device=self.engine.device)[None]
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            model.logits(model.hidden_states(ids, positions, None, None)[:, -1])
            times.append(time.perf_counter() - started)
        return sorted(times)[len(times) // 2] / tokens

    # ------------------------------------------------------------------ one generate call, in rounds
    @torch.no_grad()
    def start(self, call_id: int, prompts: list[list[int]], keys: list[int], params: SamplingParams, version: int,
              reserve: tuple[int, int]) -> dict:
        if self.receiver.version != version:
            raise RuntimeError(f"rollout worker {self.index} holds weights version {self.receiver.version}, "
                               f"asked to generate with version {version}")
        self.engine.policy_version = version
        self.engine.start(prompts, params, keys=keys, reserve=reserve)
        self.call_id = call_id
        return self.engine.load()

    def _check_call(self, call_id: int) -> None:
        if self.call_id != call_id:
            raise WorkerRestarted(f"rollout worker {self.index} (pid {self.pid}) is not in generate call {call_id}: "
                                  f"it was restarted")

    @torch.no_grad()
    def advance(self, call_id: int, seconds: float) -> tuple[list, dict, float]:
        """Engine steps for about `seconds` (at least one while work is left) → (finished sequences
        since the last call, the load after — with the steps run and tokens made — busy seconds)."""
        self._check_call(call_id)
        started = time.perf_counter()
        scheduler = self.engine.scheduler
        steps = tokens = 0
        while not scheduler.done:
            before = len(self.engine.finished)
            self.engine.step()
            steps += 1
            tokens += len(scheduler.running) + len(self.engine.finished) - before  # ≈ one token per sequence
            if time.perf_counter() - started >= seconds:
                break
        busy = time.perf_counter() - started
        finished, self.engine.finished = self.engine.finished, []
        for seq in finished:  # the driver may have no GPU
            seq.logprobs = seq.logprobs.cpu()
        load = self.engine.load()
        load.update(steps=steps, tokens=tokens)  # for the pool's step-cost fit (rollout_pool.StepCostFit)
        return finished, load, busy

    def take(self, call_id: int, seq_ids: list[int], with_kv: bool = False) -> list:
        """Give up those of these sequences that are still unfinished here (the others finished since
        the pool planned the move), with their K/V rows when `with_kv` (else tokens only)."""
        self._check_call(call_id)
        here = {s["seq_id"] for s in self.engine.load()["sequences"]}
        return self.engine.take(seq_ids=[i for i in seq_ids if i in here], with_kv=with_kv)

    @torch.no_grad()
    def add(self, call_id: int, sequences: list) -> dict:
        self._check_call(call_id)
        self.engine.add(sequences)
        return self.engine.load()

    def finish(self) -> None:
        self.call_id = None
        if not self.engine.compile:
            self.engine.release()
