"""AdamW with decay-free norms / biases / embeddings, and the learning-rate schedule.

Schedule (step s counts optimizer steps from 0, W = warmup_steps, S = total_steps):

    warm-up   s < W:  m(s) = (s + 1) / W                 (never 0, so no step is wasted)
    decay     s ≥ W:  p = clamp((s − W) / max(1, S − W), 0, 1)
                      cosine: m = r + (1 − r)·½(1 + cos πp);  linear: m = r + (1 − r)(1 − p);
                      none:   m = 1
    lr(s) = peak_lr · m(s), with r = min_ratio (default 0: decays to 0 at s = S).

`build_scheduler` wraps `lr_multiplier` in a `LambdaLR`; call `scheduler.step()` after every
`optimizer.step()`, so optimizer step s runs at lr(s).

Weight decay (AdamW's decoupled θ ← θ − lr·λ·θ) applies only to matrices of linear layers. Left
without decay: RMSNorm gains and biases (1-D: decaying them pulls gains towards 0, which only
rescales activations) and embedding tables (rows of rare tokens get few gradients and would be
shrunk towards 0 by decay alone) — including a tied output head, which *is* the embedding table.

Left out: layer-wise lr decay, fused / 8-bit optimizers, schedules with restarts.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

Decay = Literal["cosine", "linear", "none"]
DECAYS = ("cosine", "linear", "none")


def no_decay_names(model: nn.Module) -> set[str]:
    """Names of parameters that get no weight decay: 1-D tensors (norms, biases) and embeddings."""
    names = {name for name, p in model.named_parameters() if p.ndim < 2}
    for module_name, module in model.named_modules():
        if isinstance(module, nn.Embedding):
            names.update(f"{module_name}.{n}" if module_name else n for n, _ in module.named_parameters(recurse=False))
    return names


def build_optimizer(model: nn.Module, lr: float, weight_decay: float = 0.0, betas: tuple[float, float] = (0.9, 0.999),
                    eps: float = 1e-8) -> torch.optim.AdamW:
    """AdamW over the trainable parameters of `model`: group 0 decays, group 1 does not.

    Each group carries `param_names` (in parameter order) so checkpoints can key state by name.
    """
    skip = no_decay_names(model)
    decay, no_decay = [], []
    for name, p in model.named_parameters():  # named_parameters() de-duplicates tied weights
        if p.requires_grad:
            (no_decay if name in skip else decay).append((name, p))
    groups = [
        {"params": [p for _, p in decay], "param_names": [n for n, _ in decay], "weight_decay": weight_decay},
        {"params": [p for _, p in no_decay], "param_names": [n for n, _ in no_decay], "weight_decay": 0.0},
    ]
    params = [p for g in groups for p in g["params"]]
    # fused: one kernel per step, no foreach temporaries (the foreach path holds ~2x parameter bytes
    # of intermediates at its peak); CPU and CUDA both have it, for fp32 / bf16 / fp16 parameters
    fused = all(p.device.type in ("cpu", "cuda") and p.dtype.is_floating_point for p in params)
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=lr, betas=betas, eps=eps, fused=fused)


def lr_multiplier(step: int, warmup_steps: int, total_steps: int, decay: Decay = "cosine", min_ratio: float = 0.0) -> float:
    """m(s) of the module docstring: the factor applied to the peak learning rate at step `step`."""
    if decay not in DECAYS:
        raise ValueError(f"decay must be one of {DECAYS}, got {decay!r}")
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if decay == "none":
        return 1.0
    progress = min(max((step - warmup_steps) / max(1, total_steps - warmup_steps), 0.0), 1.0)
    shape = 0.5 * (1.0 + math.cos(math.pi * progress)) if decay == "cosine" else 1.0 - progress
    return min_ratio + (1.0 - min_ratio) * shape


def build_scheduler(optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int, decay: Decay = "cosine",
                    min_ratio: float = 0.0) -> LambdaLR:
    """`LambdaLR` whose factor at optimizer step s is `lr_multiplier(s, ...)`."""
    if decay not in DECAYS:
        raise ValueError(f"decay must be one of {DECAYS}, got {decay!r}")
    return LambdaLR(optimizer, lambda step: lr_multiplier(step, warmup_steps, total_steps, decay, min_ratio))

