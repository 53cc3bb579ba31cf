"""Make the worked_addition task's starting policy: `python scripts/make_worked_policy.py`.

The recipe of scripts/make_builtin_policy.py (`make_policy`: task tokenizer, our decoder, SFT with
`fastrlhf.train.sft` at a constant learning rate, optional early stop on training-split validation
accuracy) on `worked_addition.sft_demonstrations`, with this task's defaults: long-tailed operand
sizes (`worked_addition.DIGIT_WEIGHTS`, 1-8 digits), max_position_embeddings 128 (prompt ≤ 19 tokens
+ `worked_addition.DEFAULT_MAX_NEW_TOKENS` = 96 new tokens), 96 new tokens when decoding. Then it
measures, on held-out problems, the share of well-formed traces (greedy and at temperature 1) and
the response length in tokens (EOS included) of temperature-1 samples, and writes the HF directory
to src/fastrlhf/tasks/worked_policy_model/ (or --out). Fixed seed: the same command gives the same file.

Shipped recipe (the defaults; seed 0, one thread): our decoder, hidden 128, 4 layers, 4 heads, SwiGLU
344, tied embeddings, max_position_embeddings 128 → 794,240 params, 3.18 MB safetensors. SFT on
`worked_addition.sft_demonstrations(100_000, seed=0, digits=None, carry_drop=0.75)`, batch 64, AdamW
lr 1e-3 after 100 warm-up steps, constant, grad clip 1, loss on response + EOS, 1200 steps, no early
stop: 634 s of SFT (0.53 s/step), 673 s for the whole script.

Measured on `eval_rows(200)` (held out), rollout engine, 96 new tokens:
- greedy accuracy 31.0% (no-carry problems 87%, carry problems 0.8%: 91% of them get the carry-free
  answer); temperature 1: per-sample accuracy 42.6%, pass@8 81.0%;
- well-formed traces (`worked_addition.is_well_formed`): greedy 99.0%, temperature 1 98.5%;
- response length in tokens at temperature 1 (EOS included): mean 35.5, median 29, 90th percentile
  64, max 76;
- GRPO fixes it: 20 steps × 8 prompts × 8 samples → held-out greedy 0.32 → 0.91 (100 problems).
Failed attempt: carry_drop 0.6 (greedy 57.5%, but it flips between 25% and 60% from one checkpoint to
the next and GRPO flips it to 95% in 3 steps: no learning curve). Details in docs/LOG.md.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_builtin_policy import fmt, make_policy, parse_args  # noqa: E402  (shared recipe)

from fastrlhf.rollout.engine import RolloutEngine  # noqa: E402
from fastrlhf.rollout.sampler import SamplingParams  # noqa: E402
from fastrlhf.tasks import worked_addition  # noqa: E402

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "src" / "fastrlhf" / "tasks" / "worked_policy_model"

DEFAULTS = dict(  # the shipped recipe (module docstring)
    out=DEFAULT_OUT, digits=None, max_positions=128, steps=1200, batch=64, lr=1e-3, warmup=100,
    demos=100_000, carry_drop=0.75, eval_size=200)


def trace_stats(model, tok, rows: list[dict], k: int = 8, seed: int = 0) -> dict[str, float]:
    """Well-formed share (greedy, and k samples at T=1) and T=1 response lengths in tokens (EOS included)."""
    engine = RolloutEngine(model, num_slots=256)
    prompts = [tok.encode_prompt(r["prompt"]) for r in rows]
    stops, n = (tok.eos_token_id,), worked_addition.DEFAULT_MAX_NEW_TOKENS
    greedy = engine.generate(prompts, SamplingParams(temperature=0, max_new_tokens=n, stop_token_ids=stops))
    sampled = engine.generate(prompts, SamplingParams(temperature=1.0, max_new_tokens=n, stop_token_ids=stops, n=k,
                                                      seed=seed))

    def formed(seqs) -> float:
        return sum(worked_addition.is_well_formed(tok.decode(s.token_ids)) for s in seqs) / len(seqs)

    lengths = sorted(len(s.token_ids) for s in sampled)
    return {"well_formed_greedy": formed(greedy), "well_formed_T1": formed(sampled),
            "len_mean": statistics.mean(lengths), "len_median": statistics.median(lengths),
            "len_p90": lengths[int(0.9 * (len(lengths) - 1))], "len_max": lengths[-1]}


def main(argv=None) -> int:
    args = parse_args(argv, description=__doc__.splitlines()[0], **DEFAULTS)
    t0 = time.time()
    model, tok, rows = make_policy(args, worked_addition, max_new_tokens=worked_addition.DEFAULT_MAX_NEW_TOKENS)
    stats = trace_stats(model, tok, rows)
    print("traces: " + ", ".join(f"{k} {v:.1%}" if k.startswith("well") else f"{k} {v:g}" for k, v in stats.items()))
    print(f"total with trace stats {time.time() - t0:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
