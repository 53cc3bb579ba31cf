"""In-process workers for the model roles of a dataflow graph (actor, ref, reward).

Each worker implements the methods its calls need (`generate`, `inference`, `train`) over `Batch`es
with the field names documented in `algorithms/graphs.py`; the executor never looks inside.

- `ActorWorker.generate`: prompts → n samples each through the rollout engine; returns token ids,
  masks, behaviour log-probs (from the engine) and decoded completions.
- `ActorWorker.train`: the algorithm's `Objective` (algorithms/objectives.py) prepares targets and
  gives each micro-batch's loss; this worker owns the generic part — shuffled mini-batches (whole
  DPO pairs stay together), micro-batches whose losses add up to the mini-batch loss, clipping, one
  optimizer step per mini-batch. Policy-gradient objectives also report `logprob_diff`: the largest
  gap between the engine's and the trainer's log-probs of the same tokens before the first update
  (≈1e-6 in fp32: same code).
- `ReferenceWorker.inference`: frozen-model log-probs for the KL term / DPO.

Critic and reward workers live in train/critic.py and train/reward_workers.py.
Left out: sharded / remote workers (the runtime, later).
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
from fastrlhf.train.logprobs import sequence_logprobs
from fastrlhf.updates import optimizer_step
from fastrlhf.train.padding import pack_sequences


OUTSIDE_SUPPORT = "outside_support_tokens"  # a count per mini-batch: summed over micro-batches
MODEL_DISTRIBUTION = SamplingParams(temperature=1.0)  # the model's own softmax: no temperature, no filtering


class ActorWorker:
    def __init__(self, model: CausalLM, tokenizer: Tokenizer, engine: RolloutEngine, params: SamplingParams,
                 optimizer: torch.optim.Optimizer, scheduler, algorithm, micro_batch_size: int,
                 mini_batches: int = 1, grad_clip: float = 0.0):
        self.model, self.tokenizer, self.engine, self.params = model, tokenizer, engine, params
        self.optimizer, self.scheduler, self.algorithm = optimizer, scheduler, algorithm
        self.micro_batch_size, self.mini_batches, self.grad_clip = micro_batch_size, mini_batches, grad_clip
        self.objective = OBJECTIVES[algorithm.name](algorithm)
        # the trainer scores tokens under the sampling distribution (policy gradients) or the plain model (DPO)
        self.train_params = params if self.objective.uses_sampling_distribution else MODEL_DISTRIBUTION
        self.step_seed = 0  # set by the loop each step so sampling is reproducible after resume
        self.step = 0  # the run's step (0-based), set by the loop

    # ---------------------------------------------------------------- generate
    def generate(self, batch: Batch) -> tuple[Batch, dict[str, float]]:
        prompt_ids = [self.tokenizer.encode_prompt(p) for p in batch["prompts"]]
        params = SamplingParams(**{**self.params.__dict__, "seed": self.step_seed})
        started = time.perf_counter()
        self.model.eval()
        spec = self.engine.speculator
        before = dict(spec.stats.__dict__) if spec is not None else {}
        steps_before = len(getattr(spec, "chosen", []))
        seqs = self.engine.generate(prompt_ids, params)
        seconds = time.perf_counter() - started
        responses = [s.token_ids for s in seqs]
        sequences, attention_mask, response_mask = pack_sequences([s.prompt_ids for s in seqs], responses, self.tokenizer.pad_token_id)
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
            "completions": [self.tokenizer.decode(r) for r in responses],
        })
        stats = {"response_length": n_tokens / len(seqs), "rollout_tokens_per_s": n_tokens / max(seconds, 1e-9),
                 "truncated_fraction": sum(s.finish_reason == "length" for s in seqs) / len(seqs)}
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
        logprob_diff = 0.0
        parts = min(self.mini_batches, units)
        for m, unit_rows in enumerate(order.chunk(parts)):
            rows = (unit_rows[:, None] * unit + torch.arange(unit)).reshape(-1)
            stats, diff = self._update(batch.select(rows), check_logprobs=(m == 0))
            logprob_diff = max(logprob_diff, diff)
            for k, v in stats.items():
                totals[k] = totals.get(k, 0.0) + v / parts
        self.engine.policy_version += 1
        totals["lr"] = self.optimizer.param_groups[0]["lr"]
        if self.objective.uses_sampling_distribution:
            totals["logprob_diff"] = logprob_diff
        if "advantages" in batch:
            mask = batch["response_mask"]
            totals["advantage_abs"] = float((batch["advantages"].abs() * mask).sum() / mask.sum().clamp(min=1))
        return totals

    def _update(self, mini: Batch, check_logprobs: bool) -> tuple[dict[str, float], float]:
        """One optimizer step on a mini-batch, accumulated over micro-batches.

        Micro-batch losses are shares of the mini-batch loss (normalised by the mini-batch's token,
        sequence or pair count), so their sum is exactly the mini-batch loss whatever the micro-batch
        size. Micro-batches hold whole units (a DPO pair is two rows)."""
        normaliser = self.objective.normaliser(mini)
        unit = self.objective.rows_per_unit
        micro_rows = max(unit, self.micro_batch_size // unit * unit)
        self.optimizer.zero_grad(set_to_none=True)
        stats_sum: dict[str, float] = {}
        diff = 0.0
        loss_sum = torch.zeros(())
        for rows in torch.arange(len(mini)).split(micro_rows):
            micro = mini.select(rows)
            loss, stats, micro_diff = self._micro_loss(micro, normaliser, check_logprobs)
            loss.backward()
            loss_sum = loss_sum + loss.detach().cpu()
            diff = max(diff, micro_diff)
            weight = self.objective.stat_weight(micro, mini)
            for k, v in stats.items():
                stats_sum[k] = stats_sum.get(k, 0.0) + (v if k in SUMMED_STATS or k == OUTSIDE_SUPPORT else v * weight)
        stats_sum["grad_norm"] = optimizer_step(self.model, self.optimizer, self.scheduler, self.grad_clip, loss_sum)
        return stats_sum, diff

    def _micro_loss(self, micro: Batch, normaliser: float, check_logprobs: bool):
        mask = micro["response_mask"]
        logprobs, logits = sequence_logprobs(self.model, micro["sequences"], micro["attention_mask"], mask,
                                             self.train_params, return_logits=True)
        diff = 0.0
        if check_logprobs and self.objective.uses_sampling_distribution:
            diff = float(((logprobs.detach() - micro["logprobs"]).abs() * mask).max())
        logprobs, micro, outside = _outside_support_removed(logprobs, micro)
        loss, stats = self.objective.loss(logprobs, micro, normaliser)
        stats["entropy"] = _response_entropy(logits.detach(), mask[:, 1:], self.train_params)
        stats[OUTSIDE_SUPPORT] = outside
        return loss, stats, diff


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


def _response_entropy(logits: torch.Tensor, mask: torch.Tensor, params: SamplingParams) -> float:
    """Mean entropy of the sampling distribution over response positions (logits predict tokens 1..T-1)."""
    from fastrlhf.rollout.sampler import sampling_logprobs

    logp = sampling_logprobs(logits, params)
    ent = -(logp.exp() * torch.where(torch.isinf(logp), torch.zeros_like(logp), logp)).sum(-1)  # [N, T-1]
    m = mask.to(ent.dtype)
    return float((ent * m).sum() / m.sum().clamp(min=1))


class ReferenceWorker:
    """Frozen reference log-probs at the sampling temperature, *without* top-k / top-p: the reference
    may rank a token the actor sampled outside its own nucleus (log-prob −inf, KL +inf). With
    filtering on, the k3 KL therefore also carries log(nucleus mass) — small, and zero when off."""

    def __init__(self, model: CausalLM, params: SamplingParams, micro_batch_size: int):
        self.model, self.micro_batch_size = model.eval(), micro_batch_size
        self.params = SamplingParams(temperature=params.temperature or 1.0, max_new_tokens=params.max_new_tokens)

    @classmethod
    def for_actor(cls, model: CausalLM, actor: "ActorWorker", micro_batch_size: int) -> "ReferenceWorker":
        """A reference scoring under the same distribution as the actor's trainer (DPO: the plain model)."""
        return cls(model, actor.params if actor.objective.uses_sampling_distribution else MODEL_DISTRIBUTION,
                   micro_batch_size)

    @torch.no_grad()
    def inference(self, batch: Batch) -> Batch:
        device = next(self.model.parameters()).device
        parts = []
        for micro in batch.to(device).split(max(1, -(-len(batch) // self.micro_batch_size))):
            parts.append(sequence_logprobs(self.model, micro["sequences"], micro["attention_mask"], micro["response_mask"], self.params))
        return Batch({"ref_logprobs": torch.cat(parts)})
