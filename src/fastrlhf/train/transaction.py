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
    commit()    the step completed: drop the snapshot

A model never updated in a step costs nothing; an updated one costs one copy of its weights and
optimizer moments per step (≈ 3× the parameter bytes for AdamW), kept on the parameters' device —
with a real model on a GPU that memory is the price of never checkpointing a torn step.

Left out: snapshots in host memory for GPU models, and sharded (multi-rank) state (the runtime).
"""

from __future__ import annotations

import copy

import torch

from fastrlhf.train.checkpoint import capture_rng, restore_rng


def _clone(value):
    """Deep copy of a state dict, tensors cloned (not aliased)."""
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    if isinstance(value, dict):
        return {k: _clone(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_clone(v) for v in value)
    return copy.deepcopy(value)


class StepTransaction:
    def __init__(self, trained: dict[str, tuple]):
        """`trained`: {name: (model, optimizer, scheduler)} — every model a step may update."""
        self.trained = trained
        self._snapshots: dict[str, tuple] = {}
        self._rng = None
        self._open = False
        self._hooks = [optimizer.register_step_pre_hook(self._pre_step_hook(name))
                       for name, (_, optimizer, _) in trained.items()]

    def _pre_step_hook(self, name: str):
        def hook(optimizer, args, kwargs):
            if self._open and name not in self._snapshots:
                model, optimizer, scheduler = self.trained[name]
                self._snapshots[name] = (_clone(model.state_dict()), _clone(optimizer.state_dict()),
                                         _clone(scheduler.state_dict()) if scheduler is not None else None)
        return hook

    @property
    def updated(self) -> list[str]:
        """Names of the models updated since `begin()`."""
        return list(self._snapshots)

    def begin(self) -> None:
        self._snapshots, self._rng, self._open = {}, capture_rng(), True

    def commit(self) -> None:
        self._snapshots, self._rng, self._open = {}, None, False

    def rollback(self) -> None:
        """Restore every model updated since `begin()` (weights, optimizer, scheduler) and the RNG."""
        for name, (weights, optimizer_state, scheduler_state) in self._snapshots.items():
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
        self.commit()

    def close(self) -> None:
        for handle in self._hooks:
            handle.remove()
