"""Reward-model training on preference pairs (Bradley–Terry) and batched scoring.

A reward model is our decoder with a scalar head (`model/heads.py`). A row (prompt p, completion c)
is encoded as `encode_prompt(p) + encode(c) + [EOS]`, right-padded, and its reward is the head's
value at the row's last real token (the EOS):

    r(p, c) = w · h_L[last]        h_L = final-normed hidden states, w = score head

Training minimises the Bradley–Terry loss (`algorithms/losses/reward_model.py`)
L = mean_p −log σ(r(chosen_p) − r(rejected_p)). Gradient accumulation back-propagates
(b / P) · L_b for each micro-batch of b of the P pairs (L_b its own mean), so the accumulated
gradient equals the full batch's. Chosen and rejected rows of a micro-batch share one forward.
Data order: step s uses pairs `sft.batch_indices(P_total, batch_size, s, seed)`, a pure function
of (s, seed).

Hugging Face convention: `transformers`' `*ForSequenceClassification` reads the score at the
rightmost token that is not `config.pad_token_id`. `reward_model_from_policy` therefore sets
pad_token_id to the tokenizer's pad id, and a saved RM scores like `reward_model_scores` as long as
pad ≠ EOS and no prompt / completion token is the pad token (true for the built-in tokenizer; with
a tokenizer whose pad *is* EOS, transformers would read the token before the EOS instead).

Left out: reward normalisation / centering, margin losses, ensembles, LoRA, mixed precision.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from fastrlhf.algorithms.losses.reward_model import bradley_terry_loss
from fastrlhf.model.decoder import CausalLM
from fastrlhf.model.heads import with_score_head
from fastrlhf.train.optim import Decay, build_optimizer, build_scheduler
from fastrlhf.train.padding import pack_sequences
from fastrlhf.train.sft import batch_indices, guarded_step, stop_on_skips

PairIds = tuple[list[int], list[int]]  # (chosen row ids, rejected row ids), each prompt + completion + EOS


@dataclass
class RewardModelConfig:
    steps: int = 300
    batch_size: int = 64  # pairs per optimizer step
    micro_batch_size: int = 64  # pairs per forward (2× rows)
    lr: float = 3e-4
    warmup_steps: int = 20
    decay: Decay = "cosine"
    min_lr_ratio: float = 0.0
    weight_decay: float = 0.0
    grad_clip: float = 1.0  # 0 = off
    seed: int = 0
    eval_every: int = 0  # 0 = only at the end


# ------------------------------------------------------------------ encoding and scoring
def encode_row(tokenizer, prompt: str, completion: str) -> list[int]:
    """prompt + completion + EOS as one id list (the row a reward model scores)."""
    if tokenizer.eos_token_id is None:
        raise ValueError("reward model rows need an EOS token; the tokenizer has none")
    return tokenizer.encode_prompt(prompt) + tokenizer.encode(completion) + [tokenizer.eos_token_id]


def pad_rows(rows: Sequence[Sequence[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded input_ids [B, T], attention_mask [B, T] and last_index [B] (last real token)."""
    input_ids, attention_mask, _ = pack_sequences(rows, [()] * len(rows), pad_id)
    last_index = attention_mask.sum(1) - 1
    return input_ids.to(device), attention_mask.to(device), last_index.to(device)


def row_scores(model: CausalLM, rows: Sequence[Sequence[int]], pad_id: int) -> torch.Tensor:
    """Differentiable rewards [B] of already-encoded rows: the head's value at each row's last token."""
    input_ids, attention_mask, last_index = pad_rows(rows, pad_id, next(model.parameters()).device)
    hidden = model.forward_hidden(input_ids, attention_mask)  # [B, T, d]
    values = model.values(hidden)  # [B, T]
    return values.gather(1, last_index[:, None]).squeeze(1)  # [B]


@torch.no_grad()
def reward_model_scores(model: CausalLM, tokenizer, prompts: list[str], completions: list[str],
                        micro_batch_size: int = 64) -> torch.Tensor:
    """Rewards [N] (float32, on the model's device) of (prompt, completion) rows; no gradients."""
    if len(prompts) != len(completions):
        raise ValueError(f"got {len(prompts)} prompts but {len(completions)} completions")
    rows = [encode_row(tokenizer, p, c) for p, c in zip(prompts, completions)]
    device = next(model.parameters()).device
    if not rows:
        return torch.zeros(0, device=device)
    chunks = [row_scores(model, rows[i: i + micro_batch_size], tokenizer.pad_token_id)
              for i in range(0, len(rows), micro_batch_size)]
    return torch.cat(chunks).float()


def encode_pairs(tokenizer, pairs: Sequence[dict]) -> list[PairIds]:
    """Rows {prompt, chosen, rejected, ...} → (chosen ids, rejected ids)."""
    return [(encode_row(tokenizer, p["prompt"], p["chosen"]), encode_row(tokenizer, p["prompt"], p["rejected"]))
            for p in pairs]


def reward_model_from_policy(policy: CausalLM, pad_token_id: int, seed: int = 0) -> CausalLM:
    """A reward model initialised from `policy` with a fresh scalar head; config carries `pad_token_id`."""
    model = with_score_head(policy, seed=seed)
    model.config = model.config.replace(pad_token_id=pad_token_id)
    return model


# ------------------------------------------------------------------ training
def pair_scores(model: CausalLM, pairs: Sequence[PairIds], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(chosen [b], rejected [b]) rewards from one forward over the 2b rows."""
    scores = row_scores(model, [c for c, _ in pairs] + [r for _, r in pairs], pad_id)  # [2b]
    return scores[:len(pairs)], scores[len(pairs):]


def accumulate_gradients(model: CausalLM, pairs: Sequence[PairIds], micro_batch_size: int, pad_id: int) -> dict[str, float]:
    """Backward of the full-batch BT loss, micro-batch by micro-batch; returns pair-weighted stats."""
    totals: dict[str, float] = {}
    for start in range(0, len(pairs), micro_batch_size):
        chunk = pairs[start: start + micro_batch_size]
        loss, stats = bradley_terry_loss(*pair_scores(model, chunk, pad_id))
        weight = len(chunk) / len(pairs)
        (loss * weight).backward()
        for key, value in stats.items():
            totals[key] = totals.get(key, 0.0) + value * weight
    return totals


def reward_model_step(model: CausalLM, optimizer, scheduler, pairs: Sequence[PairIds], micro_batch_size: int,
                      grad_clip: float, pad_id: int) -> dict[str, float]:
    """One optimizer step on `pairs`; returns loss, accuracy, margin, grad_norm (before clipping), lr."""
    optimizer.zero_grad(set_to_none=True)
    stats = accumulate_gradients(model, pairs, micro_batch_size, pad_id)
    stats["lr"] = optimizer.param_groups[0]["lr"]
    return guarded_step(model, optimizer, scheduler, grad_clip, stats)


@torch.no_grad()
def evaluate_pairs(model: CausalLM, pairs: Sequence[PairIds], pad_id: int, micro_batch_size: int = 64) -> dict[str, float]:
    """BT loss, pair accuracy (chosen scored higher) and mean margin over `pairs` (eval mode)."""
    was_training = model.training
    model.eval()
    chosen, rejected = [], []
    for start in range(0, len(pairs), micro_batch_size):
        c, r = pair_scores(model, pairs[start: start + micro_batch_size], pad_id)
        chosen.append(c)
        rejected.append(r)
    model.train(was_training)
    _, stats = bradley_terry_loss(torch.cat(chosen), torch.cat(rejected))
    return {k: stats[k] for k in ("loss", "accuracy", "margin")}


def train_reward_model(model: CausalLM, train_pairs: Sequence[PairIds], cfg: RewardModelConfig, pad_id: int,
                       eval_pairs: Sequence[PairIds] = (), log: Callable[[str], None] | None = print) -> list[dict[str, float]]:
    """`cfg.steps` BT steps with a new AdamW + schedule; held-out accuracy every `eval_every` steps
    and at the end (logged, and stored in the history as `eval_*`). Returns per-step stats."""
    if not train_pairs:
        raise ValueError("train_reward_model: no training pairs")
    optimizer = build_optimizer(model, cfg.lr, cfg.weight_decay)
    scheduler = build_scheduler(optimizer, cfg.warmup_steps, cfg.steps, cfg.decay, cfg.min_lr_ratio)
    history, started = [], time.time()
    model.train()
    for step in range(cfg.steps):
        batch = [train_pairs[i] for i in batch_indices(len(train_pairs), cfg.batch_size, step, cfg.seed)]
        stats = reward_model_step(model, optimizer, scheduler, batch, cfg.micro_batch_size, cfg.grad_clip, pad_id)
        last = step + 1 == cfg.steps
        if eval_pairs and (last or (cfg.eval_every and (step + 1) % cfg.eval_every == 0)):
            stats.update({f"eval_{k}": v for k, v in evaluate_pairs(model, eval_pairs, pad_id, cfg.micro_batch_size).items()})
        history.append(stats)
        stop_on_skips(history, what="reward-model training")
        if log and (last or (step + 1) % max(1, cfg.eval_every or 50) == 0):
            held_out = f", held-out accuracy {stats['eval_accuracy']:.3f}" if "eval_accuracy" in stats else ""
            log(f"step {step + 1}/{cfg.steps}: loss {stats['loss']:.4f}, batch accuracy {stats['accuracy']:.3f}"
                f"{held_out} ({time.time() - started:.0f} s)")
    model.eval()
    return history
