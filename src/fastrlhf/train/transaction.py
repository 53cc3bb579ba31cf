"""All-or-nothing training steps: the pre-step state of every trained model, kept until the step ends.

One RL step can apply many optimizer updates — one per mini-batch, on the actor and the PPO critic,
plus a draft-model refresh. If anything fails half-way (an error in mini-batch 2, a non-finite
gradient in the critic), the models hold a mix of updated and stale weights that no step number
describes. `StepTransaction` makes the step atomic:

    begin()     at the start of a step: forget the previous snapshot, record the RNG state
    (lazily)    just before the *first* `optimizer.step()` of each trained model in this step
                (a torch optimizer step pre-hook), copy that model's weights, optimizer state and
                LR-scheduler state
    rollback()  put every snapshotted model back, and the RNG state: the pre-step state exactly
    commit()    the step completed: apply its deferred last updates (below); the snapshot's tensors
                become the buffers the next step copies into

Deferred last updates (`updates.DeferredUpdates`, `self.deferred`): a trainer passes it to its
*last* `optimizer_step` of the step (the only one, with one mini-batch), which checks and clips at
once but applies the step at `commit()`, when nothing in the step can fail any more; `rollback()`
drops it. Updated only that way, a model needs no snapshot: the common step (GRPO, one mini-batch)
costs neither memory nor a copy. Should applying a deferred update itself fail, the step is torn:
`commit()` raises and the loop saves nothing.

A model never updated in a step costs nothing; an updated one costs one copy of its weights and
optimizer moments per step (≈ 3× the parameter bytes for AdamW), kept on the parameters' device —
with a real model on a GPU that memory is the price of never checkpointing a torn step.

`snapshots=False` (`train.atomic_steps=false`) saves that memory: the hook only records which models
were updated. A failure before the step's first update still rolls back completely (nothing was
applied); after it, `rollback()` returns False — the step is torn, and the loop stops the run
without checkpointing it (the last checkpoint is intact; resume from there).

Left out: snapshots in host memory for GPU models, and sharded (multi-rank) state (the runtime).
"""

from __future__ import annotations

import copy

import torch

from fastrlhf.train.checkpoint import capture_rng, restore_rng
from fastrlhf.updates import DeferredUpdates


def _clone(value, spare=None):
    """Deep copy of a state dict, tensors copied (not aliased) — into the matching tensors of `spare`
    (the previous step's snapshot) where shapes agree: re-using the buffers instead of allocating
    ~3× the parameter bytes afresh every step (measured on the 135M shape: 2.4 s of page faults per
    step, docs/LOG.md)."""
    if isinstance(value, torch.Tensor):
        if (isinstance(spare, torch.Tensor) and spare.shape == value.shape and spare.dtype == value.dtype
                and spare.device == value.device):
            return spare.copy_(value.detach())
        return value.detach().clone()
    if isinstance(value, dict):
        spare = spare if isinstance(spare, dict) else {}
        return {k: _clone(v, spare.get(k)) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        spare = spare if isinstance(spare, (list, tuple)) and len(spare) == len(value) else [None] * len(value)
        return type(value)(_clone(v, w) for v, w in zip(value, spare))
    return copy.deepcopy(value)


class StepTransaction:
    def __init__(self, trained: dict[str, tuple], snapshots: bool = True):
        """`trained`: {name: (model, optimizer, scheduler)} — every model a step may update."""
        self.trained, self.snapshots = trained, snapshots
        self._snapshots: dict[str, tuple | None] = {}
        self._spare: dict[str, tuple | None] = {}  # a committed step's snapshot: buffers for the next one
        self.deferred = DeferredUpdates()
        self._rng = None
        self._open = False
        self._hooks = [optimizer.register_step_pre_hook(self._pre_step_hook(name))
                       for name, (_, optimizer, _) in trained.items()]

    def _pre_step_hook(self, name: str):
        def hook(optimizer, args, kwargs):
            if self._open and name not in self._snapshots:
                model, optimizer, scheduler = self.trained[name]
                spare = self._spare.pop(name, None) or (None, None, None)
                self._snapshots[name] = (_clone(model.state_dict(), spare[0]), _clone(optimizer.state_dict(), spare[1]),
                                         _clone(scheduler.state_dict()) if scheduler is not None else None
                                         ) if self.snapshots else None
        return hook

    @property
    def updated(self) -> list[str]:
        """Names of the models updated since `begin()`."""
        return list(self._snapshots)

    def begin(self) -> None:
        self._snapshots, self._rng, self._open = {}, capture_rng(), True

    def commit(self) -> None:
        """Apply the deferred updates (no snapshot is taken for them: the transaction is closed first)."""
        self._open = False
        self._spare.update({k: v for k, v in self._snapshots.items() if v is not None})
        self._snapshots, self._rng = {}, None
        self.deferred.apply()

    def rollback(self) -> bool:
        """Restore every model updated since `begin()` (weights, optimizer, scheduler) and the RNG.
        False: without snapshots a model was already updated — the pre-step state is gone (torn step)."""
        self.deferred.discard()
        torn = [name for name, snapshot in self._snapshots.items() if snapshot is None]
        for name, snapshot in self._snapshots.items():
            if snapshot is None:
                continue
            weights, optimizer_state, scheduler_state = snapshot
            model, optimizer, scheduler = self.trained[name]
            with torch.no_grad():
                for key, tensor in model.state_dict().items():
                    tensor.copy_(weights[key])
            optimizer.state.clear()  # an optimizer that had no state before the step gets none back
            optimizer.load_state_dict(optimizer_state)
            if scheduler is not None:
                scheduler.load_state_dict(scheduler_state)
            for p in model.parameters():
                p.grad = None
        if self._rng is not None:
            restore_rng(self._rng)
        # the optimizers may now hold the snapshot's tensors themselves (load_state_dict keeps tensors
        # of the right dtype and device): never write into them again
        self._snapshots, self._spare, self._rng, self._open = {}, {}, None, False
        return not torn

    def close(self) -> None:
        for handle in self._hooks:
            handle.remove()
