"""In-process workers for the model roles of a dataflow graph (actor, ref, reward).

Each worker implements the methods its calls need (`generate`, `inference`, `train`) over `Batch`es
with the field names documented in `algorithms/graphs.py`; the executor never looks inside.

- `ActorWorker.generate`: prompts → n samples each through the rollout engine; returns token ids,
  masks, behaviour log-probs (from the engine) and decoded completions.
- `ActorWorker.train`: the algorithm's `Objective` (algorithms/objectives.py) prepares targets and
  gives each micro-batch's loss; this worker owns the generic part — shuffled mini-batches (whole
  DPO pairs stay together), micro-batches whose losses add up to the mini-batch loss, clipping, one
  optimizer step per mini-batch. Micro-batches are packed by token budget (`micro_batch_tokens`,
  train/packing.py) or padded rows (`micro_batch_size`); forwards run under the run's precision
  (model/precision.py: autocast over fp32 masters). Policy-gradient objectives report the
  rollout-vs-trainer mismatch before the first update (train/mismatch.py; `logprob_diff` ≈1e-6 in
  fp32: same code) and, when it is not exact, take π_old from the trainer (`recompute_logprobs`)
  with truncated importance weights of the engine's samples (`tis_cap`).
- `ReferenceWorker.inference`: frozen-model log-probs for the KL term / DPO.

Critic and reward workers live in train/critic.py and train/reward_workers.py.
With `data_parallel`, `ActorWorker.train` runs only this rank's rows of each mini-batch and sums
gradients and statistics over the ranks (train/data_parallel.py).
Left out: sharded (FSDP / tensor-parallel) workers.
"""

from __future__ import annotations

import time

import torch

from fastrlhf.algorithms.objectives import OBJECTIVES, SUMMED_STATS
from fastrlhf.dataflow.batch import Batch
from fastrlhf.model.decoder import CausalLM
from fastrlhf.model.tokenizer import Tokenizer
from fastrlhf.rollout.engine import RolloutEngine
from fastrlhf.rollout.sampler import SamplingParams
from fastrlhf.algorithms.losses.policy import tis_weights
from fastrlhf.model.precision import Precision, RolloutCopy
from fastrlhf.train.logprobs import micro_logprobs, score_batch
from fastrlhf.train.mismatch import LogprobCheck
from fastrlhf.train.packing import micro_batch_rows
from fastrlhf.train.rollout_queue import staleness_stats
from fastrlhf.updates import DeferredUpdates, optimizer_step
from fastrlhf.train.padding import pack_sequences


OUTSIDE_SUPPORT = "outside_support_tokens"  # a count per mini-batch: summed over micro-batches
MODEL_DISTRIBUTION = SamplingParams(temperature=1.0)  # the model's own softmax: no temperature, no filtering


class ActorWorker:
    def __init__(self, model: CausalLM, tokenizer: Tokenizer, engine: RolloutEngine, params: SamplingParams,
                 optimizer: torch.optim.Optimizer, scheduler, algorithm, micro_batch_size: int,
                 mini_batches: int = 1, grad_clip: float = 0.0, micro_batch_tokens: int = 0,
                 precision: Precision | None = None, rollout: RolloutCopy | None = None, data_parallel=None):
        """`rollout`: the engine's low-precision copy of `model` (refreshed before each generate);
        None when the engine decodes from `model` itself (fp32). `engine` may be None on a trainer
        rank that only trains (runtime.backend=ray). `data_parallel`: this rank's
        train/data_parallel.DataParallel, or None for one rank."""
        self.model, self.tokenizer, self.engine, self.params = model, tokenizer, engine, params
        self.optimizer, self.scheduler, self.algorithm = optimizer, scheduler, algorithm
        self.micro_batch_size, self.mini_batches, self.grad_clip = micro_batch_size, mini_batches, grad_clip
        self.micro_batch_tokens = micro_batch_tokens
        self.precision = precision or Precision(torch.float32, next(model.parameters()).device)
        self.rollout = rollout
        self.data_parallel = data_parallel
        self.policy_version = 0  # committed updates so far; every sample is tagged with the version that made it
        self.deferred: DeferredUpdates | None = None  # set by the loop: the step's last update applies at commit
        self.objective = OBJECTIVES[algorithm.name](algorithm)
        # π_old for the clipped ratio: recomputed by the trainer unless rollout and trainer are exact (fp32)
        choice = getattr(algorithm, "recompute_logprobs", "auto")
        self.recompute = self.objective.uses_sampling_distribution and (
            choice == "always" or (choice == "auto" and not self.precision.exact))
        # the trainer scores tokens under the sampling distribution (policy gradients) or the plain model (DPO)
        self.train_params = params if self.objective.uses_sampling_distribution else MODEL_DISTRIBUTION
        self.step_seed = 0  # set by the loop each step so sampling is reproducible after resume
        self.step = 0  # the run's step (0-based), set by the loop
        self.staleness_bound = 0  # policy versions a sample may lag the trainer (train/rollout_queue.py)

    # ---------------------------------------------------------------- generate
    def generate(self, batch: Batch) -> tuple[Batch, dict[str, float]]:
        prompt_ids = [self.tokenizer.encode_prompt(p) for p in batch["prompts"]]
        params = SamplingParams(**{**self.params.__dict__, "seed": self.step_seed})
        started = time.perf_counter()
        self.model.eval()
        if self.rollout is not None:
            self.rollout.refresh()  # the engine's copy gets this step's master weights
        self.engine.policy_version = self.policy_version
        spec = self.engine.speculator
        before = dict(spec.stats.__dict__) if spec is not None else {}
        steps_before = len(getattr(spec, "chosen", []))
        seqs = self.engine.generate(prompt_ids, params)
        seconds = time.perf_counter() - started
        out, stats = rollout_batch(seqs, self.tokenizer, seconds)
        if spec is not None:
            delta = {k: v - before[k] for k, v in spec.stats.__dict__.items()}
            stats["spec/gamma"] = spec.gamma
            if delta["passes"]:  # only steps that verified drafts have an acceptance to report
                stats.update({"spec/acceptance": delta["accepted"] / max(delta["drafted"], 1),
                              "spec/tokens_per_pass": delta["committed"] / delta["passes"]})
            recent = getattr(spec, "chosen", [])[steps_before:]
            if recent:  # adaptive: the mean γ chosen over this call's engine steps
                stats["spec/gamma"] = sum(recent) / len(recent)
        return out, stats

    # ---------------------------------------------------------------- train
    def train(self, batch: Batch) -> dict[str, float]:
        """One update on an iteration's batch: the objective's targets, then shuffled mini-batches."""
        device = next(self.model.parameters()).device
        batch = batch.to(device)
        totals: dict[str, float] = {}
        if "policy_version" in batch:  # every sample's age, checked against the schedule (train/rollout_queue.py)
            lags = (self.policy_version - batch["policy_version"]).tolist()
            totals.update(staleness_stats(lags, self.staleness_bound, self.step))
        if "rewards" in batch:
            rewards = batch["rewards"].float()
            totals.update({"reward": float(rewards.mean()),
                           "reward_std": float(rewards.std()) if len(rewards) > 1 else 0.0})
        batch = self.objective.prepare(batch)
        totals["train_rows"] = float(len(batch))
        if len(batch) == 0:  # e.g. online DPO when every prompt's samples tie: nothing to learn from
            return totals
        if self.step < self.algorithm.freeze_actor_steps:  # PPO: let a fresh critic catch up first
            totals["actor_frozen"] = 1.0
            return totals
        self.model.train()
        unit = self.objective.rows_per_unit
        units = len(batch) // unit
        order = torch.randperm(units, generator=torch.Generator().manual_seed(self.step_seed))
        parts = min(self.mini_batches, units)
        if self.recompute and parts > 1:  # later mini-batches need π_old from before the first update
            batch = batch.update({"old_logprobs": score_batch(self.model, batch, self.train_params, self.micro_batch_size,
                                                              self.micro_batch_tokens, self.precision)})
        chunks = order.chunk(parts)
        for m, unit_rows in enumerate(chunks):
            rows = (unit_rows[:, None] * unit + torch.arange(unit)).reshape(-1)
            last = m == len(chunks) - 1
            if last:
                totals["lr"] = self.optimizer.param_groups[0]["lr"]  # the learning rate of the step's last update
            stats, mismatch = self._update(batch.select(rows.to(device)), check_logprobs=(m == 0),
                                           defer=self.deferred if last else None)
            for k, v in stats.items():
                totals[k] = totals.get(k, 0.0) + v / parts
            if m == 0:
                totals.update(mismatch.stats())
        self.policy_version += 1
        if "advantages" in batch:
            mask = batch["response_mask"]
            totals["advantage_abs"] = float((batch["advantages"].abs() * mask).sum() / mask.sum().clamp(min=1))
        return totals

    def _update(self, mini: Batch, check_logprobs: bool, defer: DeferredUpdates | None = None
                ) -> tuple[dict[str, float], LogprobCheck]:
        """One optimizer step on a mini-batch, accumulated over micro-batches.

        Micro-batch losses are shares of the mini-batch loss (normalised by the mini-batch's token,
        sequence or pair count), so their sum is exactly the mini-batch loss whatever the micro-batch
        size or token budget. Micro-batches hold whole units (a DPO pair is two rows)."""
        normaliser = self.objective.normaliser(mini)  # over the whole mini-batch: the same on every rank
        self.optimizer.zero_grad(set_to_none=True)
        stats_sum: dict[str, float] = {}
        mismatch = LogprobCheck()
        loss_sum = torch.zeros(())
        device = mini["sequences"].device
        unit, dp = self.objective.rows_per_unit, self.data_parallel
        mine = mini if dp is None else mini.select(dp.my_rows(mini["attention_mask"], unit).to(device))
        for rows in micro_batch_rows(mine["attention_mask"], self.micro_batch_size, self.micro_batch_tokens, unit):
            micro = mine.select(rows.to(device))
            loss, stats = self._micro_loss(micro, normaliser, mismatch if check_logprobs else None)
            self.precision.backward(loss)
            loss_sum = loss_sum + loss.detach().cpu()
            weight = self.objective.stat_weight(micro, mini)
            for k, v in stats.items():
                stats_sum[k] = stats_sum.get(k, 0.0) + (v if k in SUMMED_STATS or k == OUTSIDE_SUPPORT else v * weight)
        if dp is not None:  # the mini-batch gradient, statistics and loss are sums over the ranks' rows
            dp.all_reduce_grads(self.model)
            stats_sum = dp.sum_stats(stats_sum)
            loss_sum = dp.sum(loss_sum)
            mismatch = LogprobCheck.merged(dp.gather(mismatch))
        stats_sum["grad_norm"] = optimizer_step(self.model, self.optimizer, self.scheduler, self.grad_clip, loss_sum,
                                                scaler=self.precision.scaler, defer=defer)
        return stats_sum, mismatch

    def _micro_loss(self, micro: Batch, normaliser: float, mismatch: LogprobCheck | None):
        mask = micro["response_mask"]
        logprobs, entropy = micro_logprobs(self.model, micro, self.train_params, self.micro_batch_tokens > 0,
                                           self.precision)
        if mismatch is not None and self.objective.uses_sampling_distribution:
            lag = self.policy_version - micro["policy_version"] if "policy_version" in micro else None
            mismatch.add(logprobs.detach(), micro["logprobs"], mask, lag)
        logprobs, micro, outside = _outside_support_removed(logprobs, micro)
        if self.recompute:
            micro = self._recomputed_old(micro, logprobs)
        loss, stats = self.objective.loss(logprobs, micro, normaliser)
        stats["entropy"] = float((entropy * mask).sum() / mask.sum().clamp(min=1))
        stats[OUTSIDE_SUPPORT] = outside
        return loss, stats

    def _recomputed_old(self, micro: Batch, logprobs: torch.Tensor) -> Batch:
        """π_old := the trainer's log-probs before this step's first update (the pre-pass's, or with
        one mini-batch this very forward's, detached), and — with `tis_cap` — the truncated
        importance weights min(π_old / π_rollout, cap) of the engine's samples."""
        mask = micro["response_mask"]
        old = micro["old_logprobs"] if "old_logprobs" in micro else logprobs.detach()
        old = torch.where(mask.bool(), old, torch.zeros_like(old))  # tokens dropped above: 0, like logprobs
        fields = {"logprobs": old}
        if self.algorithm.tis_cap > 0:
            fields["tis_weights"] = tis_weights(old, micro["logprobs"], mask, self.algorithm.tis_cap)
        return micro.update(fields)


def _outside_support_removed(logprobs: torch.Tensor, micro: Batch) -> tuple[torch.Tensor, Batch, float]:
    """Drop response tokens the current policy gives probability 0 (log-prob −inf) from the loss.

    With top-k / top-p sampling the trainer scores under the *filtered* distribution (so rollout and
    trainer log-probs agree exactly). After a first mini-batch update a sampled token can fall outside
    the new nucleus: its ratio π/π_old is 0, and the clipped surrogate's gradient there is 0 anyway,
    but the k3 KL to the reference, e^(ref − logp) − (ref − logp) − 1, is +inf − inf = NaN. Such
    tokens carry no usable gradient, so they leave the loss (their log-probs become 0 behind a masked
    `where`, which passes no gradient); the normaliser keeps counting them, as a zero contribution.
    Returns (log-probs, micro-batch with the reduced response mask, number of tokens dropped)."""
    mask = micro["response_mask"]
    outside = torch.isneginf(logprobs) & mask.bool()
    if not bool(outside.any()):
        return logprobs, micro, 0.0
    keep = ~outside
    logprobs = torch.where(keep, logprobs, torch.zeros_like(logprobs))
    return logprobs, micro.update({"response_mask": mask * keep.to(mask.dtype)}), float(outside.sum())


class ReferenceWorker:
    """Frozen reference log-probs at the sampling temperature, *without* top-k / top-p: the reference
    may rank a token the actor sampled outside its own nucleus (log-prob −inf, KL +inf). With
    filtering on, the k3 KL therefore also carries log(nucleus mass) — small, and zero when off."""

    def __init__(self, model: CausalLM, params: SamplingParams, micro_batch_size: int, micro_batch_tokens: int = 0,
                 precision: Precision | None = None):
        self.model, self.micro_batch_size, self.micro_batch_tokens = model.eval(), micro_batch_size, micro_batch_tokens
        self.precision = precision or Precision(torch.float32, next(model.parameters()).device)
        self.params = SamplingParams(temperature=params.temperature or 1.0, max_new_tokens=params.max_new_tokens)

    @classmethod
    def for_actor(cls, model: CausalLM, actor: "ActorWorker", micro_batch_size: int | None = None) -> "ReferenceWorker":
        """A reference scoring under the same distribution, micro-batching and precision as the actor's
        trainer (DPO: the plain model)."""
        return cls(model, actor.params if actor.objective.uses_sampling_distribution else MODEL_DISTRIBUTION,
                   micro_batch_size or actor.micro_batch_size, actor.micro_batch_tokens, actor.precision)

    def inference(self, batch: Batch) -> Batch:
        device = next(self.model.parameters()).device
        return Batch({"ref_logprobs": score_batch(self.model, batch.to(device), self.params, self.micro_batch_size,
                                                  self.micro_batch_tokens, self.precision)})


def rollout_batch(seqs: list, tokenizer: Tokenizer, seconds: float) -> tuple[Batch, dict[str, float]]:
    """Finished sequences (ordered by prompt, sample) → the generate call's output batch and stats
    (algorithms/graphs.py fields): `prompt_index` is each sample's row in the call's prompt batch."""
    responses = [s.token_ids for s in seqs]
    sequences, attention_mask, response_mask = pack_sequences([s.prompt_ids for s in seqs], responses, tokenizer.pad_token_id)
    logprobs = torch.zeros(sequences.shape, dtype=torch.float32)
    for i, s in enumerate(seqs):
        logprobs[i, s.prompt_len : s.prompt_len + len(s.token_ids)] = s.logprobs.cpu()
    n_tokens = sum(len(r) for r in responses)
    out = Batch({
        "prompt_index": torch.tensor([s.prompt_index for s in seqs]),
        "sequences": sequences,
        "attention_mask": attention_mask,
        "response_mask": response_mask,
        "logprobs": logprobs,
        "completions": [tokenizer.decode(r) for r in responses],
        "policy_version": torch.tensor([s.policy_version for s in seqs], dtype=torch.int64),
    })
    stats = {"response_length": n_tokens / len(seqs), "rollout_tokens_per_s": n_tokens / max(seconds, 1e-9),
             "truncated_fraction": sum(s.finish_reason == "length" for s in seqs) / len(seqs)}
    return out, stats
