"""Make the arithmetic task's built-in starting policy: `python scripts/make_builtin_policy.py`.

Builds the task tokenizer and a tiny Llama-family model (our decoder), SFT-trains it with
`fastrlhf.train.sft` on `arithmetic.sft_demonstrations` at a constant learning rate until greedy
accuracy on 200 *training-split* validation problems reaches `--stop-at` (checked every
`--check-every` steps; the held-out split is never used to stop), prints held-out greedy accuracy and
pass@8 at temperature 1 (rollout engine), and writes the HF directory with `save_model` to
src/fastrlhf/tasks/builtin_policy_model/ (or --out). Fixed seed: the same command gives the same file.
`--eval-every N` also reports accuracy during training (for choosing the recipe; see docs/LOG.md).

`make_policy(args, task, max_new_tokens)` is the whole recipe for any addition-style task module
(`arithmetic`, `worked_addition`); scripts/make_worked_policy.py reuses it with other defaults.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

import torch

from fastrlhf.model.config import ModelConfig
from fastrlhf.model.decoder import CausalLM
from fastrlhf.model.hf_io import copy_tokenizer_files, save_model
from fastrlhf.model.tokenizer import load_tokenizer
from fastrlhf.rollout.engine import RolloutEngine
from fastrlhf.rollout.sampler import SamplingParams
from fastrlhf.tasks import arithmetic
from fastrlhf.tasks.tokenizer_builder import build_task_tokenizer
from fastrlhf.train.sft import SFTConfig, encode_pairs, train_sft

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "src" / "fastrlhf" / "tasks" / "builtin_policy_model"


def parse_args(argv=None, description: str = __doc__.splitlines()[0], **defaults) -> argparse.Namespace:
    """The recipe's options; `defaults` override the arithmetic policy's (e.g. steps=4000)."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--max-positions", type=int, default=64, help="max_position_embeddings of the model")
    ap.add_argument("--steps", type=int, default=1500, help="at most this many SFT steps")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--warmup", type=int, default=50)
    ap.add_argument("--decay", default="none", help="none: constant lr after warm-up (see docs/LOG.md)")
    ap.add_argument("--digits", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--demos", type=int, default=60_000)
    ap.add_argument("--carry-drop", type=float, default=0.75,
                    help="share of demonstrations by a careless annotator who drops carries")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--eval-size", type=int, default=200)
    ap.add_argument("--eval-every", type=int, default=0)
    ap.add_argument("--stop-at", type=float, default=0.0,
                    help="stop once greedy accuracy on training-split validation problems reaches this")
    ap.add_argument("--check-every", type=int, default=50)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-save", action="store_true")
    ap.set_defaults(**defaults)
    return ap.parse_args(argv)


def build_model(vocab_size: int, tok, args) -> CausalLM:
    """Tied embeddings, SwiGLU width ≈ 8/3·d; weights N(0, 0.02) (the nn defaults give N(0, 1) logits)."""
    cfg = ModelConfig(model_type="llama", vocab_size=vocab_size, hidden_size=args.hidden,
                      intermediate_size=(8 * args.hidden // 3 + 7) // 8 * 8, num_layers=args.layers,
                      num_heads=args.heads, num_kv_heads=args.heads, head_dim=args.hidden // args.heads,
                      max_position_embeddings=args.max_positions, tie_word_embeddings=True, bos_token_id=tok.hf.bos_token_id,
                      eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(args.seed)
    model = CausalLM(cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 2:
                p.normal_(0.0, 0.02)
    return model


def greedy_accuracy(model: CausalLM, tok, rows: list[dict], task=arithmetic, max_new_tokens: int = 8) -> float:
    engine = RolloutEngine(model, num_slots=256)
    seqs = engine.generate([tok.encode_prompt(r["prompt"]) for r in rows],
                           SamplingParams(temperature=0, max_new_tokens=max_new_tokens, stop_token_ids=(tok.eos_token_id,)))
    return task.accuracy([tok.decode(s.token_ids) for s in seqs], [r["answer"] for r in rows])


def evaluate(model: CausalLM, tok, rows: list[dict], k: int = 8, seed: int = 0, task=arithmetic,
             max_new_tokens: int = 8) -> dict[str, float]:
    """Greedy accuracy on `rows` and pass@k / mean accuracy of k samples at temperature 1."""
    engine = RolloutEngine(model, num_slots=256)
    prompts = [tok.encode_prompt(r["prompt"]) for r in rows]
    answers = [r["answer"] for r in rows]
    stops = (tok.eos_token_id,)
    greedy = engine.generate(prompts, SamplingParams(temperature=0, max_new_tokens=max_new_tokens, stop_token_ids=stops))
    greedy_acc = task.accuracy([tok.decode(s.token_ids) for s in greedy], answers)
    sampled = engine.generate(prompts, SamplingParams(temperature=1.0, max_new_tokens=max_new_tokens, stop_token_ids=stops,
                                                      n=k, seed=seed))
    rewards = task.reward([tok.decode(s.token_ids) for s in sampled], [a for a in answers for _ in range(k)])
    per_prompt = [rewards[i * k:(i + 1) * k] for i in range(len(rows))]
    return {"greedy": greedy_acc, f"pass@{k}": sum(max(r) for r in per_prompt) / len(rows),
            "sample_acc": sum(rewards) / len(rewards)}


def main(argv=None) -> int:
    make_policy(parse_args(argv), arithmetic, max_new_tokens=8)
    return 0


def make_policy(args: argparse.Namespace, task, max_new_tokens: int):
    """Build, SFT-train, report and (unless --no-save) write the policy; returns (model, tokenizer,
    held-out rows). `task` is a task module with sft_demonstrations / eval_rows / train_rows /
    accuracy / reward (`arithmetic` or `worked_addition`)."""
    torch.set_num_threads(args.threads)
    random.seed(args.seed)
    t0 = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        build_task_tokenizer(tmp)
        tok = load_tokenizer(tmp)
        tok_files = copy_tokenizer_files(tmp)
    model = build_model(tok.vocab_size, tok, args)
    print(f"model: {model.config.num_params():,} params (hidden {args.hidden}, {args.layers} layers)", flush=True)
    examples = encode_pairs(tok, task.sft_demonstrations(args.demos, args.seed, args.digits, args.carry_drop))
    rows = task.eval_rows(args.eval_size, args.digits)
    val_rows = task.train_rows(0, 200, seed=10_000 + args.seed, digits=args.digits)  # training split
    cfg = SFTConfig(steps=args.steps, batch_size=args.batch, micro_batch_size=args.batch, lr=args.lr,
                    warmup_steps=args.warmup, decay=args.decay, seed=args.seed)

    def on_step(step: int, stats: dict) -> None:
        if (step + 1) % 50 == 0:
            print(f"step {step + 1} loss {stats['loss']:.3f} lr {stats['lr']:.2e} ({time.time() - t0:.0f}s)", flush=True)
        if args.eval_every and (step + 1) % args.eval_every == 0:
            model.eval()
            print(f"  eval @ {step + 1}: {fmt(evaluate(model, tok, rows, task=task, max_new_tokens=max_new_tokens))}",
                  flush=True)
            model.train()
        if args.stop_at and (step + 1) % args.check_every == 0:
            model.eval()
            acc = greedy_accuracy(model, tok, val_rows, task, max_new_tokens)
            model.train()
            print(f"  validation greedy @ {step + 1}: {acc:.1%}", flush=True)
            return acc >= args.stop_at
        return False

    t_train = time.time()
    steps = len(train_sft(model, examples, cfg, tok.pad_token_id, on_step))
    t_train = time.time() - t_train
    final = evaluate(model, tok, rows, task=task, max_new_tokens=max_new_tokens)
    print(f"final ({steps} steps, {t_train:.0f}s training): {fmt(final)} on {len(rows)} held-out problems")
    if not args.no_save:
        save_model(model, args.out, extra_files=tok_files)
        size = sum(f.stat().st_size for f in args.out.iterdir())
        print(f"wrote {args.out} ({size / 1e6:.2f} MB)")
    print(f"total {time.time() - t0:.0f}s")
    return model, tok, rows


def fmt(metrics: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.1%}" for k, v in metrics.items())


if __name__ == "__main__":
    sys.exit(main())
