"""Data-parallel training over M trainer ranks that computes the one-rank update.

Every rank holds a full replica of the trained model and receives the *whole* step batch (token ids
and masks: small next to the compute), so everything computed over the batch — advantages and their
group statistics, whitening, and each mini-batch's loss normaliser (token / sequence / pair count) —
is computed on identical data and is identical on every rank without a collective. What is split is
the work: each mini-batch's rows are partitioned over the ranks, balanced by tokens, whole units (a
DPO pair) together; each rank runs the forward / backward passes of its rows only. Each micro-batch
loss is already its share of the *mini-batch* loss (algorithms/losses/aggregation.py), so the
mini-batch gradient is the plain SUM of the ranks' gradients:

    g = Σ_r Σ_{micro ∈ rows_r} ∇ loss_micro           (all_reduce SUM; no division by M)

after which clipping, the finiteness guard and the AdamW step run on identical gradients on every
rank (updates.optimizer_step), so the replicas stay equal. M ranks differ from one rank only in the
order of that sum (fp32 reduction order; tests/runtime/test_data_parallel.py measures it).

Why not `torch.nn.parallel.DistributedDataParallel`: our trainer runs packed, response-only forwards
through `CausalLM.hidden_states` and a fused LM-head op, not `module.forward`, which DDP must wrap to
arm its hooks; and DDP needs every rank to run the same number of backward passes, which token-
balanced micro-batches do not give. The reduction here is DDP's arithmetic (one bucketed all-reduce
of the gradients) without its overlap of communication with the backward pass — left out, as is
sharding (FSDP / ZeRO): every rank holds full weights and optimizer state.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

BUCKET_ELEMENTS = 16 * 1024 * 1024  # gradients are reduced in flat fp32 buckets of at most this many elements


def balanced_rows(lengths: list[int], unit: int, ranks: int) -> list[list[int]]:
    """Rows of a mini-batch per rank: units (`unit` consecutive rows) assigned longest-first to the
    rank with the fewest tokens so far (ties: the lower rank), each rank's rows in ascending order.
    A rank may get none when there are fewer units than ranks."""
    units = len(lengths) // unit
    cost = [sum(lengths[u * unit:(u + 1) * unit]) for u in range(units)]
    loads, parts = [0] * ranks, [[] for _ in range(ranks)]
    for u in sorted(range(units), key=lambda u: (-cost[u], u)):
        r = min(range(ranks), key=lambda r: (loads[r], r))
        loads[r] += cost[u]
        parts[r].extend(range(u * unit, (u + 1) * unit))
    return [sorted(p) for p in parts]


class DataParallel:
    """Rank `rank` of `world` trainer ranks in the process group `group` (None: the default group)."""

    def __init__(self, rank: int, world: int, group=None):
        self.rank, self.world, self.group = rank, world, group

    def my_rows(self, attention_mask: torch.Tensor, unit: int) -> torch.Tensor:
        """This rank's rows of a mini-batch (int64 [k], possibly empty)."""
        lengths = attention_mask.sum(1).tolist()
        return torch.tensor(balanced_rows(lengths, unit, self.world)[self.rank], dtype=torch.long)

    def all_reduce_grads(self, model: torch.nn.Module) -> None:
        """Sum every parameter's gradient over the ranks (a rank that ran no backward adds zeros)."""
        params = [p for p in model.parameters() if p.requires_grad]
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        bucket: list[torch.Tensor] = []
        size = 0
        for p in params:
            bucket.append(p)
            size += p.numel()
            if size >= BUCKET_ELEMENTS:
                self._reduce_bucket(bucket)
                bucket, size = [], 0
        if bucket:
            self._reduce_bucket(bucket)

    def _reduce_bucket(self, params: list[torch.Tensor]) -> None:
        flat = torch.cat([p.grad.reshape(-1).float() for p in params])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=self.group)
        offset = 0
        for p in params:
            n = p.numel()
            p.grad.copy_(flat[offset:offset + n].view_as(p.grad))
            offset += n

    def sum(self, value: torch.Tensor) -> torch.Tensor:
        """A tensor summed over the ranks (a copy; every rank gets the result)."""
        value = value.detach().clone().float()
        dist.all_reduce(value, op=dist.ReduceOp.SUM, group=self.group)
        return value

    def gather(self, obj) -> list:
        """Every rank's `obj` (small Python objects: statistics), in rank order."""
        out = [None] * self.world
        dist.all_gather_object(out, obj, group=self.group)
        return out

    def sum_stats(self, stats: dict[str, float]) -> dict[str, float]:
        """Per key, the sum over the ranks of each rank's (already weighted) statistic."""
        total: dict[str, float] = {}
        for part in self.gather(stats):
            for key, value in part.items():
                total[key] = total.get(key, 0.0) + value
        return total
