"""One actor update (GRPO) on a model of real shape: padded fp32 (the old trainer) vs packed fp32 vs
packed bf16 — seconds, the step's matmul throughput as a share of this machine's measured peak, and
peak memory. Each configuration runs in a fresh process so its peak RSS is its own.

    python benchmarks/train_step.py                     # the 135M shape, 16 prompts x 4 samples x 64 tokens
    python benchmarks/train_step.py --shape 23m --rows 64 --response 32

FLOPs are counted as the trainer must do them: forward + backward (3 forwards) of every linear layer
over the real tokens of the batch, attention over each sequence's own context, and the LM head on
the scored positions only — for the padded path over every position of every padded row, since it
computes them (`ModelConfig.flops_per_token`; norms, RoPE and softmax left out). The peak is the
median of 5 timed [2048 x d] x [d x 4d] matmuls in each dtype. Synthetic batch: prompts of 16 tokens,
responses of response/2 .. response tokens, random rewards; the model is the random-init preset
(bench/shapes.py, N(0, 0.02)).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time


def matmul_peak(dtype, d: int, repeats: int = 5) -> float:
    import torch

    a = torch.randn(2048, d, dtype=dtype)
    b = torch.randn(d, 4 * d, dtype=dtype)
    a @ b
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - start)
    return 2 * 2048 * d * 4 * d / statistics.median(times)


def one(mode: str, shape: str, rows: int, response: int, repeats: int, threads: int) -> dict:
    import torch

    from fastrlhf.bench.shapes import SHAPES, random_model
    from fastrlhf.config import AlgorithmSection
    from fastrlhf.dataflow.batch import Batch
    from fastrlhf.model.precision import Precision
    from fastrlhf.rollout.sampler import SamplingParams
    from fastrlhf.train.optim import build_optimizer
    from fastrlhf.train.workers import ActorWorker

    torch.set_num_threads(threads)
    model = random_model(SHAPES[shape].config)
    cfg = model.config
    g = torch.Generator().manual_seed(0)
    prompt = 16
    T = prompt + response
    lengths = torch.randint(response // 2, response + 1, (rows,), generator=g)
    sequences = torch.randint(3, cfg.vocab_size, (rows, T), generator=g)
    attention = (torch.arange(T)[None] < (prompt + lengths)[:, None]).long()
    response_mask = attention.clone()
    response_mask[:, :prompt] = 0
    batch = Batch({"sequences": sequences, "attention_mask": attention, "response_mask": response_mask,
                   "logprobs": torch.zeros(rows, T), "prompt_index": torch.arange(rows) // 4,
                   "rewards": torch.randn(rows, generator=g)})

    class NoEngine:
        policy_version, speculator = 0, None

    optimizer = build_optimizer(model, 1e-6)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    precision = Precision(torch.bfloat16 if mode.endswith("bf16") else torch.float32, "cpu")
    actor = ActorWorker(model, None, NoEngine(), SamplingParams(), optimizer, scheduler,
                        AlgorithmSection(name="grpo", kl_coef=0.0, recompute_logprobs="always"), rows, 1, 1.0,
                        0 if mode.startswith("padded") else 16384, precision)
    times = []
    for _ in range(repeats + 1):  # the first update allocates AdamW's moments: not timed
        start = time.perf_counter()
        actor.train(batch)
        times.append(time.perf_counter() - start)
    real = [int(n) for n in attention.sum(1)]
    linear = (2 * cfg.matmul_params_per_token() - 2 * cfg.vocab_size * cfg.hidden_size) * sum(real)  # LM head apart
    attention_flops = sum(4 * cfg.num_layers * cfg.num_heads * cfg.head_dim * n * (n + 1) // 2 for n in real)
    head_rows = rows * T if mode.startswith("padded") else int(response_mask[:, 1:].sum())
    head = 2 * cfg.vocab_size * cfg.hidden_size * head_rows
    flops = 3 * (linear + attention_flops + head) + (2 * cfg.vocab_size * cfg.hidden_size * head_rows
                                                     if not mode.startswith("padded") else 0)  # packed: logits recomputed in backward
    seconds = statistics.median(times[1:])
    return {"mode": mode, "seconds": seconds, "tflop": flops / 1e12, "flops_per_s": flops / seconds,
            "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6,
            "params_m": sum(p.numel() for p in model.parameters()) / 1e6, "tokens": sum(real)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", default="135m", choices=["23m", "135m"])
    p.add_argument("--rows", type=int, default=64, help="sequences (prompts x samples)")
    p.add_argument("--response", type=int, default=64, help="longest response, tokens")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--modes", nargs="+", default=["padded-fp32", "packed-fp32", "packed-bf16"])
    p.add_argument("--one", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one:
        print(json.dumps(one(args.one, args.shape, args.rows, args.response, args.repeats, args.threads)))
        return 0
    import torch

    torch.set_num_threads(args.threads)
    from fastrlhf.bench.shapes import SHAPES

    d = SHAPES[args.shape].config.hidden_size
    peak = {"fp32": matmul_peak(torch.float32, d), "bf16": matmul_peak(torch.bfloat16, d)}
    results = []
    for mode in args.modes:
        cmd = [sys.executable, __file__, "--one", mode, "--shape", args.shape, "--rows", str(args.rows),
               "--response", str(args.response), "--repeats", str(args.repeats), "--threads", str(args.threads)]
        out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": str(args.threads)})
        if out.returncode:
            print(out.stderr, file=sys.stderr)
            return 1
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))
    print(f"Shape {args.shape} ({results[0]['params_m']:.1f} M parameters), {args.rows} sequences, "
          f"{results[0]['tokens']} real tokens, {args.threads} threads; matmul peak here: "
          f"fp32 {peak['fp32'] / 1e9:.0f} GFLOP/s, bf16 {peak['bf16'] / 1e9:.0f} GFLOP/s. Medians of {args.repeats}.\n")
    print("Command: `" + " ".join(["python benchmarks/train_step.py", *sys.argv[1:]]) + "`")
    print("\n| trainer | s / update | × padded fp32 | TFLOP done | GFLOP/s | share of peak | peak RSS |")
    print("|:---|---:|---:|---:|---:|---:|---:|")
    base = results[0]["seconds"]
    for r in results:
        dt = "bf16" if r["mode"].endswith("bf16") else "fp32"
        print(f"| {r['mode']} | {r['seconds']:.2f} | {base / r['seconds']:.2f}× | {r['tflop']:.2f} | "
              f"{r['flops_per_s'] / 1e9:.0f} | {r['flops_per_s'] / peak[dt]:.0%} of {dt} | {r['peak_rss_gb']:.2f} GB |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
