"""PPO's critic: a value model (our decoder + scalar head) with its own optimizer.

`CriticWorker.inference`: values [N, T] aligned with tokens — position t holds V(s_t), the value of
the state *before* token t is generated, read from the hidden state at t − 1 (the same shift as
log-probs); 0 off the response.

`CriticWorker.train`: returns from `algorithms.objectives.ppo_targets` (GAE over the same rewards,
values and KL the actor used), then the clipped value loss (`algorithms.losses.value`) over shuffled
mini-batches with micro-batches whose losses add up to the mini-batch loss.

The critic starts from the reward model (its head already scores whole responses) or from the
policy with a fresh head (`model.heads.with_score_head`). Left out: a shared actor-critic trunk.
"""

from __future__ import annotations

import torch

from fastrlhf.algorithms.losses.value import clipped_value_loss
from fastrlhf.algorithms.losses.aggregation import aggregate_count, share_of
from fastrlhf.algorithms.objectives import ppo_targets
from fastrlhf.dataflow.batch import Batch
from fastrlhf.model.decoder import CausalLM
from fastrlhf.model.precision import Precision
from fastrlhf.updates import DeferredUpdates, optimizer_step


def token_values(model: CausalLM, sequences: torch.Tensor, attention_mask: torch.Tensor,
                 response_mask: torch.Tensor) -> torch.Tensor:
    """[N, T] values aligned with tokens: out[:, t] = head(h_{t-1}) on response positions, else 0."""
    values = model.values(model.forward_hidden(sequences, attention_mask)).float()  # [N, T] value after token t
    shifted = torch.cat([torch.zeros_like(values[:, :1]), values[:, :-1]], dim=1)  # [N, T]
    return shifted * response_mask.to(shifted.dtype)


class CriticWorker:
    def __init__(self, model: CausalLM, optimizer, scheduler, algorithm, micro_batch_size: int,
                 mini_batches: int = 1, grad_clip: float = 0.0, precision: Precision | None = None,
                 data_parallel=None):
        """`precision`: forwards under autocast over the fp32 master weights (model/precision.py).
        `data_parallel`: this trainer rank's train/data_parallel.DataParallel (None: one rank)."""
        self.data_parallel = data_parallel
        self.model, self.optimizer, self.scheduler, self.algorithm = model, optimizer, scheduler, algorithm
        self.micro_batch_size, self.mini_batches, self.grad_clip = micro_batch_size, mini_batches, grad_clip
        self.precision = precision or Precision(torch.float32, next(model.parameters()).device)
        self.step_seed = 0
        self.deferred: DeferredUpdates | None = None  # set by the loop: the step's last update applies at commit

    @torch.no_grad()
    def inference(self, batch: Batch) -> Batch:
        device = next(self.model.parameters()).device
        self.model.eval()
        with self.precision.autocast():
            parts = [token_values(self.model, m["sequences"], m["attention_mask"], m["response_mask"])
                     for m in batch.to(device).split(max(1, -(-len(batch) // self.micro_batch_size)))]
        return Batch({"values": torch.cat(parts)})

    def train(self, batch: Batch) -> dict[str, float]:
        device = next(self.model.parameters()).device
        batch = batch.to(device)
        _, returns = ppo_targets(batch, self.algorithm)
        batch = batch.update({"returns": returns})
        self.model.train()
        order = torch.randperm(len(batch), generator=torch.Generator().manual_seed(self.step_seed + 1))
        parts = min(self.mini_batches, len(batch))
        totals: dict[str, float] = {}
        chunks = order.chunk(parts)
        for m, rows in enumerate(chunks):
            for k, v in self._update(batch.select(rows), self.deferred if m == len(chunks) - 1 else None).items():
                totals[f"critic/{k}"] = totals.get(f"critic/{k}", 0.0) + v / parts
        self.model.eval()
        return totals

    def _update(self, mini: Batch, defer: DeferredUpdates | None = None) -> dict[str, float]:
        mask = mini["response_mask"]
        aggregation = self.algorithm.loss_aggregation
        denominator = aggregate_count(mask, aggregation)
        self.optimizer.zero_grad(set_to_none=True)
        stats_sum: dict[str, float] = {}
        loss_sum = torch.zeros(())
        dp = self.data_parallel
        mine = mini if dp is None else mini.select(dp.my_rows(mini["attention_mask"], 1).to(mask.device))
        for rows in torch.arange(len(mine)).split(self.micro_batch_size):
            micro = mine.select(rows)
            with self.precision.autocast():
                values = token_values(self.model, micro["sequences"], micro["attention_mask"], micro["response_mask"])
            loss, stats = clipped_value_loss(values, micro["values"], micro["returns"], micro["response_mask"],
                                             clip_range=self.algorithm.value_clip,
                                             aggregation=share_of(denominator, aggregation))
            self.precision.backward(loss)
            loss_sum = loss_sum + loss.detach().cpu()
            weight = float(micro["response_mask"].sum()) / max(float(mask.sum()), 1.0)
            for k, v in stats.items():
                stats_sum[k] = stats_sum.get(k, 0.0) + (v if k == "value_loss" else v * weight)
        if dp is not None:  # sums over the ranks' rows (the denominator above is the whole mini-batch's)
            dp.all_reduce_grads(self.model)
            stats_sum, loss_sum = dp.sum_stats(stats_sum), dp.sum(loss_sum)
        stats_sum["grad_norm"] = optimizer_step(self.model, self.optimizer, self.scheduler, self.grad_clip, loss_sum,
                                                scaler=self.precision.scaler, defer=defer)
        return stats_sum
