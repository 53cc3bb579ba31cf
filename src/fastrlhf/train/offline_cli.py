"""`fastrlhf sft` and `fastrlhf train-rm`: offline training from JSONL files.

    fastrlhf sft DATA.jsonl --model MODEL_DIR --out OUT_DIR [--steps N | --epochs E] [--batch-size B]
                 [--micro-batch-size M] [--lr LR] [--eval-fraction 0.05] [--seed S] [--device auto|cpu|cuda]
                 [--quiet]
    fastrlhf train-rm PAIRS.jsonl --model MODEL_DIR --out OUT_DIR [same knobs] [--eval PAIRS_EVAL.jsonl]

`sft` trains on {"prompt", "response"} rows with the loss on response tokens only (`train/sft.py`)
and prints the held-out response-token loss before and after. `train-rm` trains a Bradley–Terry
reward model on {"prompt", "chosen", "rejected"} rows (`train/reward_model.py`); a MODEL_DIR
without a scalar head (a policy) gets a fresh one. It prints held-out pair accuracy before / after.
Held-out rows are a seeded `--eval-fraction` of the data (or the `--eval` file for train-rm).
`--device auto` (the default) trains on CUDA when it is available, else on the CPU; the model and
every batch live on that device (`--device cuda` without CUDA is a one-line error).

Every input is checked before anything is written: numbers, OUT_DIR (must be missing or empty),
the data file (one-line `UserError` naming file:line), the device, the model directory, its
tokenizer and their vocabulary sizes (`hf_io.load_model_and_tokenizer`).
OUT_DIR is written atomically (`hf_io.save_model`), with MODEL_DIR's tokenizer files.

Left out: checkpoints / resume inside these runs (they are minutes long; rerun instead), LoRA,
packing, multi-device training.
"""

from __future__ import annotations

import argparse
import math
import random
from pathlib import Path

from fastrlhf.errors import UserError

DEFAULT_LR = 2e-5  # a common fine-tuning rate for pretrained checkpoints; tiny from-scratch models want ~1e-3


def register(subparsers) -> None:
    sft = subparsers.add_parser("sft", help="supervised fine-tuning on a JSONL file of {prompt, response}")
    _add_common_arguments(sft, "DATA.jsonl", "JSONL rows {\"prompt\": ..., \"response\": ...}")
    sft.set_defaults(func=run_sft)

    rm = subparsers.add_parser("train-rm", help="train a reward model on a JSONL file of {prompt, chosen, rejected}")
    _add_common_arguments(rm, "PAIRS.jsonl", "JSONL rows {\"prompt\": ..., \"chosen\": ..., \"rejected\": ...}")
    rm.add_argument("--eval", metavar="PAIRS_EVAL.jsonl", help="held-out pairs (default: --eval-fraction of the data)")
    rm.set_defaults(func=run_train_rm)


def _add_common_arguments(p: argparse.ArgumentParser, data_name: str, data_help: str) -> None:
    p.add_argument("data", metavar=data_name, help=data_help)
    p.add_argument("--model", required=True, metavar="MODEL_DIR", help="HF model directory with tokenizer to start from")
    p.add_argument("--out", required=True, metavar="OUT_DIR", help="where to write the trained model (must be missing or empty)")
    length = p.add_mutually_exclusive_group()
    length.add_argument("--steps", type=int, help="optimizer steps")
    length.add_argument("--epochs", type=float, help="passes over the training rows (default 1)")
    p.add_argument("--batch-size", type=int, default=32, help="rows (sft) or pairs (train-rm) per optimizer step")
    p.add_argument("--micro-batch-size", type=int, default=None, help="rows / pairs per forward (default: batch size)")
    p.add_argument("--lr", type=float, default=DEFAULT_LR, help=f"peak learning rate (default {DEFAULT_LR})")
    p.add_argument("--eval-fraction", type=float, default=0.05, help="share of rows held out for evaluation")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="where the model trains (auto: CUDA when available, else CPU)")
    p.add_argument("--quiet", action="store_true", help="no progress output")


# ------------------------------------------------------------------ checks before any work
def _check_numbers(args: argparse.Namespace) -> None:
    if args.steps is not None and args.steps < 1:
        raise UserError(f"--steps must be ≥ 1, got {args.steps}")
    if args.epochs is not None and not (args.epochs > 0 and math.isfinite(args.epochs)):
        raise UserError(f"--epochs must be > 0, got {args.epochs}")
    if args.batch_size < 1:
        raise UserError(f"--batch-size must be ≥ 1, got {args.batch_size}")
    if args.micro_batch_size is not None and args.micro_batch_size < 1:
        raise UserError(f"--micro-batch-size must be ≥ 1, got {args.micro_batch_size}")
    if not (args.lr > 0 and math.isfinite(args.lr)):
        raise UserError(f"--lr must be > 0, got {args.lr}")
    if not 0 <= args.eval_fraction < 1:
        raise UserError(f"--eval-fraction must be in [0, 1), got {args.eval_fraction}")


def _check_out_dir(out: Path) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"{out}: already exists and is not an empty directory (choose a new --out)")


def _load_model_and_tokenizer(model_dir: str, device):
    from fastrlhf.model.hf_io import load_model_and_tokenizer

    return load_model_and_tokenizer(model_dir, device=device)  # cheap checks (directory, config.json) first


def _split(rows: list, fraction: float, seed: int) -> tuple[list, list]:
    """(train, held-out): a seeded shuffle, the first round(fraction·n) rows held out (≥ 1 when fraction > 0)."""
    order = list(range(len(rows)))
    random.Random(f"offline-split/{seed}").shuffle(order)
    n_eval = 0 if fraction == 0 else max(1, round(fraction * len(rows)))
    if n_eval >= len(rows):
        raise UserError(f"{len(rows)} rows leave nothing to train on after holding out --eval-fraction {fraction}")
    return [rows[i] for i in order[n_eval:]], [rows[i] for i in order[:n_eval]]


def _steps(args: argparse.Namespace, num_rows: int) -> int:
    return args.steps if args.steps is not None else max(1, math.ceil((args.epochs or 1.0) * num_rows / args.batch_size))


def _progress(args: argparse.Namespace, total: int):
    every = max(1, total // 10)

    def on_step(step: int, stats: dict) -> None:
        if not args.quiet and ((step + 1) % every == 0 or step + 1 == total):
            print(f"step {step + 1}/{total}: loss {stats['loss']:.4f}", flush=True)
    return on_step


# ------------------------------------------------------------------ fastrlhf sft
def run_sft(args: argparse.Namespace) -> int:
    from fastrlhf.tasks.examples import load_sft_examples

    from fastrlhf.model.device import resolve_device

    _check_numbers(args)
    device = resolve_device(args.device)
    out = Path(args.out)
    _check_out_dir(out)
    rows = load_sft_examples(args.data)
    train_rows, eval_rows = _split(rows, args.eval_fraction, args.seed)
    model, tokenizer = _load_model_and_tokenizer(args.model, device)

    from fastrlhf.model.hf_io import copy_tokenizer_files, save_model
    from fastrlhf.train.sft import SFTConfig, encode_pairs, train_sft

    train_ids = encode_pairs(tokenizer, [(r["prompt"], r["response"]) for r in train_rows])
    eval_ids = encode_pairs(tokenizer, [(r["prompt"], r["response"]) for r in eval_rows])
    steps = _steps(args, len(train_ids))
    cfg = SFTConfig(steps=steps, batch_size=args.batch_size, micro_batch_size=args.micro_batch_size or args.batch_size,
                    lr=args.lr, warmup_steps=min(50, steps // 10), seed=args.seed)
    before = heldout_loss(model, eval_ids, tokenizer.pad_token_id, cfg.micro_batch_size) if eval_ids else None
    if not args.quiet:
        print(f"sft: {len(train_ids)} training rows, {len(eval_ids)} held out, {steps} steps", flush=True)
    train_sft(model, train_ids, cfg, tokenizer.pad_token_id, _progress(args, steps))
    save_model(model, out, extra_files=copy_tokenizer_files(args.model))
    if before is not None:
        after = heldout_loss(model, eval_ids, tokenizer.pad_token_id, cfg.micro_batch_size)
        print(f"held-out loss (response tokens): {before:.4f} -> {after:.4f}")
    print(f"wrote {out}")
    return 0


def heldout_loss(model, examples, pad_id: int, micro_batch_size: int) -> float:
    """Mean response-token NLL over `examples` (token-weighted across micro-batches), no gradients."""
    import torch

    from fastrlhf.train.sft import collate, response_nll

    device = next(model.parameters()).device
    total, tokens = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(examples), micro_batch_size):
            batch = collate(examples[start: start + micro_batch_size], pad_id, device)
            loss, n = response_nll(model(batch["input_ids"], batch["attention_mask"]), batch["input_ids"], batch["response_mask"])
            total, tokens = total + loss.item() * n, tokens + n
    return total / max(tokens, 1)


# ------------------------------------------------------------------ fastrlhf train-rm
def run_train_rm(args: argparse.Namespace) -> int:
    from fastrlhf.tasks.examples import load_preference_pairs

    from fastrlhf.model.device import resolve_device

    _check_numbers(args)
    device = resolve_device(args.device)
    out = Path(args.out)
    _check_out_dir(out)
    pairs = load_preference_pairs(args.data)
    if args.eval:
        train_pairs, eval_pairs = pairs, load_preference_pairs(args.eval)
    else:
        train_pairs, eval_pairs = _split(pairs, args.eval_fraction, args.seed)
    policy, tokenizer = _load_model_and_tokenizer(args.model, device)

    from fastrlhf.model.hf_io import copy_tokenizer_files, save_model
    from fastrlhf.train import reward_model as rm

    model = policy if policy.config.score_head else rm.reward_model_from_policy(policy, tokenizer.pad_token_id, args.seed)
    if tokenizer.pad_token_id == tokenizer.eos_token_id and not args.quiet:
        print("note: the tokenizer's pad token is its EOS token; transformers' *ForSequenceClassification will "
              "score the token before the EOS, fastrlhf scores the EOS", flush=True)
    train_ids, eval_ids = rm.encode_pairs(tokenizer, train_pairs), rm.encode_pairs(tokenizer, eval_pairs)
    steps = _steps(args, len(train_ids))
    cfg = rm.RewardModelConfig(steps=steps, batch_size=args.batch_size, micro_batch_size=args.micro_batch_size or args.batch_size,
                               lr=args.lr, warmup_steps=min(20, steps // 10), seed=args.seed,
                               eval_every=max(1, steps // 5))
    pad = tokenizer.pad_token_id
    before = rm.evaluate_pairs(model, eval_ids, pad, cfg.micro_batch_size) if eval_ids else None
    if not args.quiet:
        print(f"train-rm: {len(train_ids)} training pairs, {len(eval_ids)} held out, {steps} steps", flush=True)
    rm.train_reward_model(model, train_ids, cfg, pad, eval_ids, log=None if args.quiet else print)
    save_model(model, out, extra_files=copy_tokenizer_files(args.model))
    if before is not None:
        after = rm.evaluate_pairs(model, eval_ids, pad, cfg.micro_batch_size)
        print(f"held-out pair accuracy: {before['accuracy']:.3f} -> {after['accuracy']:.3f} "
              f"(BT loss {before['loss']:.4f} -> {after['loss']:.4f})")
    print(f"wrote {out}")
    return 0
