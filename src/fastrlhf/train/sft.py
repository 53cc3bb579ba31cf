"""Supervised fine-tuning on (prompt_ids, response_ids) pairs: masked next-token cross-entropy.

Loss over a batch of sequences x (prompt p followed by response r, EOS included in r):

    L = − (1 / N) Σ_i Σ_{t ∈ response(i)} log π_θ(x_{i,t} | x_{i,<t}),   N = Σ_i |r_i|

i.e. the mean token NLL of response tokens only; prompt tokens condition but are never predicted.
Gradient accumulation splits a batch into micro-batches b and back-propagates
(n_b / N) · L_b, where L_b is micro-batch b's own mean and n_b its response-token count, so the
accumulated gradient equals the full-batch gradient (not the mean of per-micro-batch means).

One step: zero grads → accumulate → clip the global grad norm → AdamW step → LR schedule step.
Data order: step s uses examples `batch_indices(len(examples), batch_size, s, seed)`, a pure
function of (s, seed), so a resumed run needs only the step as its data position.

Left out: packing several sequences per row, label smoothing, loss on prompt tokens, mixed
precision (fp32 throughout; a GPU caller can wrap `sft_step` in autocast).
"""

from __future__ import annotations

import functools
import random
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from fastrlhf.model.decoder import CausalLM
from fastrlhf.train.optim import Decay, build_optimizer, build_scheduler
from fastrlhf.train.padding import pack_sequences
from fastrlhf.errors import UserError
from fastrlhf.updates import NonFiniteUpdate, optimizer_step

Example = tuple[list[int], list[int]]  # (prompt_ids, response_ids)


@dataclass
class SFTConfig:
    steps: int = 1000
    batch_size: int = 64
    micro_batch_size: int = 64
    lr: float = 1e-3
    warmup_steps: int = 50
    decay: Decay = "cosine"
    min_lr_ratio: float = 0.0
    weight_decay: float = 0.0
    grad_clip: float = 1.0  # 0 = off
    seed: int = 0


def response_nll(logits: torch.Tensor, input_ids: torch.Tensor, response_mask: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Mean NLL of the response tokens and their count.

    logits [B, T, V] from a forward over input_ids [B, T]; response_mask [B, T] is 1 where
    input_ids[b, t] is a response token (a target). Token t is predicted by logits at t − 1, so
    column 0 is never a target. Returns (loss, n) with loss = Σ mask·(−log p) / n (0 when n = 0).
    """
    targets = input_ids[:, 1:]  # [B, T-1]
    mask = response_mask[:, 1:].to(logits.dtype)  # [B, T-1]
    logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)  # [B, T-1, V]
    nll = -logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)  # [B, T-1]
    n_tokens = int(mask.sum().item())
    loss = (nll * mask).sum() / max(n_tokens, 1)
    return loss, n_tokens


def collate(examples: Sequence[Example], pad_id: int, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """Right-padded `input_ids`, `attention_mask` and `response_mask`, each [B, T_max] (padding.py)."""
    input_ids, attention_mask, response_mask = pack_sequences([p for p, _ in examples], [r for _, r in examples], pad_id)
    return {"input_ids": input_ids.to(device), "attention_mask": attention_mask.to(device),
            "response_mask": response_mask.to(device)}


def batch_indices(num_examples: int, batch_size: int, step: int, seed: int) -> list[int]:
    """Example indices of step `step`: consecutive slices of a per-epoch seeded permutation."""
    out: list[int] = []
    position = step * batch_size
    while len(out) < batch_size:
        epoch, offset = divmod(position, num_examples)
        take = epoch_order(num_examples, seed, epoch)[offset: offset + batch_size - len(out)]
        out.extend(take)
        position += len(take)
    return out


@functools.lru_cache(maxsize=2)
def epoch_order(num_examples: int, seed: int, epoch: int) -> tuple[int, ...]:
    """The seeded permutation of example indices for one epoch (cached: shuffling 100k costs ~0.1 s)."""
    order = list(range(num_examples))
    random.Random(f"sft/{seed}/{epoch}").shuffle(order)
    return tuple(order)


def accumulate_gradients(model: CausalLM, examples: Sequence[Example], micro_batch_size: int, pad_id: int) -> dict[str, float]:
    """Backward of the full-batch loss L, micro-batch by micro-batch; returns {"loss", "tokens"}."""
    device = next(model.parameters()).device
    micro = [examples[i: i + micro_batch_size] for i in range(0, len(examples), micro_batch_size)]
    total_tokens = sum(len(r) for _, r in examples)
    loss_sum = 0.0
    for chunk in micro:
        batch = collate(chunk, pad_id, device)
        logits = model(batch["input_ids"], batch["attention_mask"])
        loss, n = response_nll(logits, batch["input_ids"], batch["response_mask"])
        (loss * (n / max(total_tokens, 1))).backward()
        loss_sum += loss.item() * n
    return {"loss": loss_sum / max(total_tokens, 1), "tokens": float(total_tokens)}


def sft_step(model: CausalLM, optimizer: torch.optim.Optimizer, scheduler, examples: Sequence[Example],
             micro_batch_size: int, grad_clip: float, pad_id: int) -> dict[str, float]:
    """One optimizer step on `examples`; returns loss, tokens, grad_norm (before clipping) and lr."""
    optimizer.zero_grad(set_to_none=True)
    stats = accumulate_gradients(model, examples, micro_batch_size, pad_id)
    stats["lr"] = optimizer.param_groups[0]["lr"]
    return guarded_step(model, optimizer, scheduler, grad_clip, stats)


def guarded_step(model, optimizer, scheduler, grad_clip: float, stats: dict[str, float]) -> dict[str, float]:
    """`updates.optimizer_step` on the accumulated gradients; a non-finite loss or gradient norm skips the
    update (nothing applied) and marks the step `skipped` for the driver loop (`stop_on_skips`)."""
    try:
        stats["grad_norm"] = optimizer_step(model, optimizer, scheduler, grad_clip, stats["loss"])
    except NonFiniteUpdate:
        stats.update({"grad_norm": float("nan"), "skipped": 1.0})
    return stats


def stop_on_skips(history: list[dict], limit: int = 3, what: str = "training") -> None:
    """A one-line error once the last `limit` steps were all skipped for non-finite updates."""
    recent = history[-limit:]
    if len(recent) == limit and all(h.get("skipped") for h in recent):
        raise UserError(f"{what}: {limit} steps in a row had a non-finite loss or gradient norm and were skipped "
                        f"(nothing was applied); lower --lr or check the data")


def train_sft(model: CausalLM, examples: Sequence[Example], cfg: SFTConfig, pad_id: int,
              on_step: Callable[[int, dict[str, float]], bool | None] | None = None) -> list[dict[str, float]]:
    """Up to `cfg.steps` SFT steps with a new optimizer + schedule; returns per-step stats.

    `on_step(step, stats)` runs after every step; a truthy return value stops training there
    (early stopping, e.g. at a target accuracy).

    Callers that need checkpoints / resume build the optimizer and scheduler themselves and loop
    over `sft_step` with `batch_indices`; this is the convenience path.
    """
    if not examples:
        raise ValueError("train_sft: no examples")
    optimizer = build_optimizer(model, cfg.lr, cfg.weight_decay)
    scheduler = build_scheduler(optimizer, cfg.warmup_steps, cfg.steps, cfg.decay, cfg.min_lr_ratio)
    model.train()
    history = []
    for step in range(cfg.steps):
        batch = [examples[i] for i in batch_indices(len(examples), cfg.batch_size, step, cfg.seed)]
        stats = sft_step(model, optimizer, scheduler, batch, cfg.micro_batch_size, cfg.grad_clip, pad_id)
        history.append(stats)
        stop_on_skips(history, what="SFT")
        if on_step is not None and on_step(step, stats):
            break
    model.eval()
    return history


def encode_pairs(tokenizer, pairs: Sequence[tuple[str, str]]) -> list[Example]:
    """(prompt text, response text) → (prompt ids, response ids + EOS) with `tokenizer`'s encoding."""
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ValueError("encode_pairs: the tokenizer has no EOS token")
    return [(tokenizer.encode_prompt(p), tokenizer.encode(r) + [eos]) for p, r in pairs]
