"""The one optimizer-update helper, shared by every trainer: actor, critic, SFT, reward model, draft.

A leaf module (like files.py) so rollout/ (draft distillation) and train/ both use it without
breaking the one-way package order.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class NonFiniteUpdate(Exception):
    """An update whose loss or gradient norm is not finite; nothing was applied (gradients cleared)."""

    def __init__(self, what: str, value: float):
        super().__init__(f"non-finite {what} ({value})")
        self.what, self.value = what, value


class DeferredUpdates:
    """A step's *last* updates, held until the step commits (train/transaction.py).

    `optimizer_step(..., defer=this)` checks and clips the gradients at once but leaves
    `optimizer.step()` / `scheduler.step()` pending: `apply()` runs them when nothing in the step can
    fail any more, `discard()` drops them (and the gradients). A step whose every model updates once
    then needs no pre-step snapshot at all — no memory, no copy — and is still all-or-nothing."""

    def __init__(self):
        self._pending: list[tuple[torch.optim.Optimizer, object]] = []

    def __len__(self) -> int:
        return len(self._pending)

    def add(self, optimizer: torch.optim.Optimizer, apply) -> None:
        self._pending.append((optimizer, apply))

    def apply(self) -> None:
        pending, self._pending = self._pending, []
        for _, apply in pending:
            apply()

    def discard(self) -> None:
        pending, self._pending = self._pending, []
        for optimizer, _ in pending:
            optimizer.zero_grad(set_to_none=True)


def optimizer_step(model: nn.Module, optimizer: torch.optim.Optimizer, scheduler, grad_clip: float = 0.0,
                   loss: float | torch.Tensor | None = None, scaler=None, defer: DeferredUpdates | None = None) -> float:
    """The one update helper every trainer uses (actor, critic, SFT, reward model, draft distillation):
    clip the gradients' global norm to `grad_clip` (0 = no clipping), then `optimizer.step()` and
    `scheduler.step()`; returns the pre-clipping norm.

    Guard: when `loss` (the accumulated loss of this update) or the gradient norm is NaN / ±inf the
    update is *not* applied — gradients are cleared, weights, optimizer moments and the schedule
    stay as they were — and `NonFiniteUpdate` is raised for the caller to skip the step. One host
    sync per update (reading the norm), which the stats need anyway.

    fp16 (`scaler`, a `torch.amp.GradScaler` whose scaled loss the caller back-propagated): the
    gradients are unscaled before clipping; an infinite norm there is the scaler's overflow, not a
    broken run — the update is skipped, the scale lowered, and the norm returned as NaN (no error).

    `defer`: the checks and clipping happen now, the step itself when `defer.apply()` runs.
    """
    if loss is not None:
        loss_value = float(loss)
        if not math.isfinite(loss_value):
            optimizer.zero_grad(set_to_none=True)
            raise NonFiniteUpdate("loss", loss_value)
    limit = grad_clip if grad_clip > 0 else float("inf")
    if scaler is not None:
        scaler.unscale_(optimizer)
    grad_norm = float(torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.grad is not None], limit))
    if not math.isfinite(grad_norm) and scaler is None:
        optimizer.zero_grad(set_to_none=True)
        raise NonFiniteUpdate("gradient norm", grad_norm)

    def apply() -> None:
        if scaler is not None:
            scaler.step(optimizer)  # skips the step itself when the unscaled gradients overflowed
            scaler.update()
            if not math.isfinite(grad_norm):
                optimizer.zero_grad(set_to_none=True)
                return
        else:
            optimizer.step()
        if scheduler is not None:
            scheduler.step()

    if defer is not None:
        defer.add(optimizer, apply)
    else:
        apply()
    return grad_norm if math.isfinite(grad_norm) else float("nan")
