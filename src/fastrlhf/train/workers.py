"""In-process workers for the model roles of a dataflow graph (actor, ref, reward).

Each worker implements the methods its calls need (`generate`, `inference`, `train`) over `Batch`es
with the field names documented in `algorithms/graphs.py`; the executor never looks inside.

- `ActorWorker.generate`: prompts → n samples each through the rollout engine; returns token ids,
  masks, behaviour log-probs (from the engine) and decoded completions.
- `ActorWorker.train`: advantages from rewards (an estimator from `ADVANTAGE_ESTIMATORS`), the
  clipped policy loss over micro-batches whose losses add up to the full-batch loss, one optimizer
  step per mini-batch. It also reports `logprob_diff`: the largest gap between the engine's and the
  trainer's log-probs of the same tokens before the first update (≈1e-6 in fp32: same code).
- `ReferenceWorker.inference`: frozen-model log-probs for the KL term.
- `RewardWorker.inference`: a Python reward function `f(completions, **fields) -> list[float]`.

Left out: value models (PPO, issue 4), sharded / remote workers (the runtime, later).
"""

from __future__ import annotations

import time

import torch

from fastrlhf.algorithms.advantages import ADVANTAGE_ESTIMATORS, AdvantageInputs
from fastrlhf.algorithms.losses.policy import clipped_policy_loss
from fastrlhf.dataflow.batch import Batch
from fastrlhf.model.decoder import CausalLM
from fastrlhf.model.tokenizer import Tokenizer
from fastrlhf.rollout.engine import RolloutEngine
from fastrlhf.rollout.sampler import SamplingParams
from fastrlhf.tasks.rewards import score
from fastrlhf.train.logprobs import sequence_logprobs


def pack_sequences(prompts: list[list[int]], responses: list[list[int]], pad_id: int):
    """Right-padded [prompt + response] rows → sequences, attention_mask, response_mask [N, T]."""
    T = max(len(p) + len(r) for p, r in zip(prompts, responses))
    N = len(prompts)
    sequences = torch.full((N, T), pad_id, dtype=torch.long)
    attention_mask = torch.zeros(N, T, dtype=torch.long)
    response_mask = torch.zeros(N, T, dtype=torch.long)
    for i, (p, r) in enumerate(zip(prompts, responses)):
        sequences[i, : len(p) + len(r)] = torch.tensor(p + r)
        attention_mask[i, : len(p) + len(r)] = 1
        response_mask[i, len(p) : len(p) + len(r)] = 1
    return sequences, attention_mask, response_mask


class ActorWorker:
    def __init__(self, model: CausalLM, tokenizer: Tokenizer, engine: RolloutEngine, params: SamplingParams,
                 optimizer: torch.optim.Optimizer, scheduler, algorithm, micro_batch_size: int,
                 mini_batches: int = 1, grad_clip: float = 0.0):
        self.model, self.tokenizer, self.engine, self.params = model, tokenizer, engine, params
        self.optimizer, self.scheduler, self.algorithm = optimizer, scheduler, algorithm
        self.micro_batch_size, self.mini_batches, self.grad_clip = micro_batch_size, mini_batches, grad_clip
        self.step_seed = 0  # set by the loop each step so sampling is reproducible after resume

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
        device = next(self.model.parameters()).device
        batch = batch.to(device)
        advantages = self._advantages(batch)  # [N, T]
        self.model.train()
        order = torch.randperm(len(batch), generator=torch.Generator().manual_seed(self.step_seed))
        totals: dict[str, float] = {}
        logprob_diff = 0.0
        for m, rows in enumerate(order.chunk(self.mini_batches)):
            mini = batch.select(rows)
            stats, diff = self._update(mini, advantages[rows], check_logprobs=(m == 0))
            logprob_diff = max(logprob_diff, diff)
            for k, v in stats.items():
                totals[k] = totals.get(k, 0.0) + v / self.mini_batches
        self.engine.policy_version += 1
        rewards = batch["rewards"].float()
        totals.update({"reward": float(rewards.mean()), "reward_std": float(rewards.std()) if len(rewards) > 1 else 0.0,
                       "logprob_diff": logprob_diff, "lr": self.optimizer.param_groups[0]["lr"],
                       "advantage_abs": float((advantages.abs() * batch["response_mask"]).sum() / batch["response_mask"].sum().clamp(min=1))})
        return totals

    def _advantages(self, batch: Batch) -> torch.Tensor:
        estimator = ADVANTAGE_ESTIMATORS["grpo" if self.algorithm.normalize_std else "dr_grpo"]
        inputs = AdvantageInputs(rewards=batch["rewards"].float(), group_index=batch["prompt_index"],
                                 response_mask=batch["response_mask"])
        return estimator(inputs)

    def _update(self, mini: Batch, advantages: torch.Tensor, check_logprobs: bool) -> tuple[dict[str, float], float]:
        """One optimizer step on a mini-batch, accumulated over micro-batches.

        Micro-batch losses are normalised by the mini-batch's token (or sequence) count, so their sum
        is exactly the mini-batch loss whatever the micro-batch size."""
        mask = mini["response_mask"]
        aggregation = self.algorithm.loss_aggregation
        denominator = float(mask.sum()) if aggregation == "token_mean" else float((mask.sum(1) > 0).sum())
        self.optimizer.zero_grad(set_to_none=True)
        stats_sum: dict[str, float] = {}
        diff = 0.0
        for rows in torch.arange(len(mini)).split(self.micro_batch_size):
            micro = mini.select(rows)
            loss, stats, micro_diff = self._micro_loss(micro, advantages[rows], denominator, check_logprobs)
            loss.backward()
            diff = max(diff, micro_diff)
            weight = float(micro["response_mask"].sum()) / max(float(mask.sum()), 1.0)
            for k, v in stats.items():  # loss terms are already shares of the total: add them up
                stats_sum[k] = stats_sum.get(k, 0.0) + (v if k in SUMMED_STATS else v * weight)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip if self.grad_clip > 0 else float("inf"))
        self.optimizer.step()
        self.scheduler.step()
        stats_sum["grad_norm"] = float(grad_norm)
        return stats_sum, diff

    def _micro_loss(self, micro: Batch, advantages, denominator: float, check_logprobs: bool):
        mask = micro["response_mask"]
        logprobs, logits = sequence_logprobs(self.model, micro["sequences"], micro["attention_mask"], mask, self.params, return_logits=True)
        diff = 0.0
        if check_logprobs:
            diff = float(((logprobs.detach() - micro["logprobs"]).abs() * mask).max())
        aggregate = _share_of(denominator, self.algorithm.loss_aggregation)
        ref = micro["ref_logprobs"] if "ref_logprobs" in micro else None
        loss, stats = clipped_policy_loss(
            logprobs, micro["logprobs"], advantages, mask,
            clip_low=self.algorithm.clip_low, clip_high=self.algorithm.clip_high, aggregation=aggregate,
            ref_logprobs=ref, kl_coef=self.algorithm.kl_coef if ref is not None else 0.0,
        )
        stats["entropy"] = _response_entropy(logits.detach(), mask[:, 1:], self.params)
        return loss, stats, diff


SUMMED_STATS = ("loss", "policy_loss")


def _share_of(denominator: float, aggregation: str):
    """This micro-batch's part of the mini-batch aggregate: Σ(values) / (mini-batch count)."""
    def token_share(values, mask):
        return (values * mask.to(values.dtype)).sum() / max(denominator, 1.0)

    def sequence_share(values, mask):
        mask = mask.to(values.dtype)
        per_row = (values * mask).sum(1) / mask.sum(1).clamp(min=1)
        return per_row.sum() / max(denominator, 1.0)

    return {"token_mean": token_share, "sequence_mean": sequence_share}[aggregation]


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

    @torch.no_grad()
    def inference(self, batch: Batch) -> Batch:
        device = next(self.model.parameters()).device
        parts = []
        for micro in batch.to(device).split(max(1, -(-len(batch) // self.micro_batch_size))):
            parts.append(sequence_logprobs(self.model, micro["sequences"], micro["attention_mask"], micro["response_mask"], self.params))
        return Batch({"ref_logprobs": torch.cat(parts)})


class RewardWorker:
    def __init__(self, fn, field_names: tuple[str, ...] = ()):
        self.fn, self.field_names = fn, field_names

    def inference(self, batch: Batch) -> Batch:
        fields = {name: list(batch[name]) if not torch.is_tensor(batch[name]) else batch[name].tolist() for name in self.field_names}
        rewards = score(self.fn, list(batch["completions"]), fields)
        return Batch({"rewards": torch.tensor(rewards, dtype=torch.float32)})
