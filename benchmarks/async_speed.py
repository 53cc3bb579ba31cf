"""Asynchronous rollouts (runtime.max_staleness = 1, 2) vs synchronous: wall time to the same held-out
reward on worked_addition, on this machine — measured in one run.

    python benchmarks/async_speed.py                      # worked_addition, 24 steps, 3 seeds, 3 timed repeats
    python benchmarks/async_speed.py --task arithmetic --steps 60 --eval-every 5 --target 0.45

Two kinds of run per configuration, because evaluation would otherwise hand the generator free time:
- **curve runs** (one per seed) with a held-out evaluation every `--eval-every` steps: the
  reward-vs-step curve.
  Samples are a function of the step (train/rollout_queue.py: the version schedule does not depend
  on timing), so this curve is the same whatever the timing;
- `--repeats` **timed runs** without intermediate evaluation (interleaved across configurations):
  the seconds of every step (time/step: waiting for the rollout, scoring and the update; the
  generator's work overlaps it).
Time to target = Σ time/step (median over the timed runs) up to the median over curve seeds of the
first evaluated step whose held-out reward reaches `--target` (worked_addition's accuracy jumps from
~0.3 to ~0.9 within a few steps once sampling carries more often than not; 0.8 sits on that jump, not
on the noisy plateau). Set-up (starting Ray and the generator actor) is reported apart, not in that
sum. "decoupled" = `algorithm.recompute_logprobs=always`: the clip acts on π_θ / π_prox with the
latest policy as π_prox, and truncated importance weights π_prox / π_behaviour (docs/async.md).

Threads: the synchronous run uses both cores for everything (torch's 2 threads); the asynchronous
run gives the generator actor 1 core and the trainer the other. "sync 1 thread" is the synchronous
run on one core, whose generate / train times g, t give the overlap bound (g + t) / max(g, t).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DECOUPLED = ["algorithm.recompute_logprobs=always"]  # clip against the latest policy, IS weights to the behaviour
CONFIGS = {
    "sync (2 threads)": ([], 2),
    "sync (1 thread)": ([], 1),
    "async K=1": (["runtime.max_staleness=1"], 2),
    "async K=2": (["runtime.max_staleness=2"], 2),
    "async K=1, decoupled": (["runtime.max_staleness=1", *DECOUPLED], 2),
    "async K=2, decoupled": (["runtime.max_staleness=2", *DECOUPLED], 2),
}


def run(overrides: list[str], threads: int, run_dir: Path) -> tuple[list[dict], float]:
    """`fastrlhf train` in a child process (its own thread count) → (metrics rows, wall seconds)."""
    env_threads = {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "fastrlhf.cli", "train", *overrides, f"train.run_dir={run_dir}", "--quiet"],
                   check=True, env={**os.environ, **env_threads}, capture_output=True, text=True)
    wall = time.perf_counter() - started
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return rows, wall


def first_step_at(curve: dict[int, float], target: float) -> int | None:
    reached = [step for step, reward in sorted(curve.items()) if step > 0 and reward >= target]
    return reached[0] if reached else None


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", default="worked_addition")
    ap.add_argument("--steps", type=int, default=24)
    ap.add_argument("--eval-every", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per configuration (seed 0)")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="curve runs per configuration")
    ap.add_argument("--target", type=float, default=0.8, help="held-out reward to reach")
    ap.add_argument("--last", type=int, default=4, help="final reward = mean of the last N evaluations")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE")
    args = ap.parse_args(argv)
    common = [f"task.name={args.task}", f"train.steps={args.steps}", "train.checkpoint_every=0", *args.set]
    if args.task == "worked_addition":
        common += ["train.prompts_per_step=8", "task.eval_size=100"]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        curves = {name: [] for name in CONFIGS}
        for seed in args.seeds:
            for i, (name, (extra, threads)) in enumerate(CONFIGS.items()):
                rows, _ = run([*common, *extra, f"train.eval_every={args.eval_every}", f"train.seed={seed}"], threads,
                              root / f"curve-{seed}-{i}")
                curves[name].append({r["step"]: r["eval/reward"] for r in rows if "eval/reward" in r})
        timed = {name: [] for name in CONFIGS}
        for repeat in range(args.repeats):
            for i, (name, (extra, threads)) in enumerate(CONFIGS.items()):
                rows, wall = run([*common, *extra, "train.eval_every=0"], threads, root / f"timed-{repeat}-{i}")
                timed[name].append((rows, wall))
    one = [r for rows, _ in timed["sync (1 thread)"] for r in rows if "time/step" in r]
    g = statistics.median(r["time/actor.generate"] for r in one)
    t = statistics.median(r["time/step"] - r["time/actor.generate"] for r in one)
    two = statistics.median(r["time/step"] for rows, _ in timed["sync (2 threads)"] for r in rows if "time/step" in r)
    print(f"{args.task}, {args.steps} steps, seeds {args.seeds}; target held-out reward {args.target}; sync 1-thread "
          f"g = {g:.3f} s, t = {t:.3f} s: overlap bound (g + t) / max(g, t) = {(g + t) / max(g, t):.2f}x over sync "
          f"1 thread, {two / max(g, t):.2f}x over sync 2 threads ({two:.3f} s / step)\n")
    print("| run | steps to target (median; per seed) | s to target (median) | vs sync (2 threads) | s / step (median) "
          f"| final held-out reward (mean of last {args.last} evals, seeds) | wall s incl. set-up (median) |")
    print("|---|---|---|---|---|---|---|")
    reference = None
    for name in CONFIGS:
        per_seed = [first_step_at(c, args.target) for c in curves[name]]
        steps_to = statistics.median(s if s is not None else float("inf") for s in per_seed)
        per_step = statistics.median(r["time/step"] for rows, _ in timed[name] for r in rows if "time/step" in r)
        cumulative = [[r["time/step"] for r in rows if "time/step" in r] for rows, _ in timed[name]]
        reached = steps_to != float("inf")
        seconds = statistics.median(sum(c[:int(steps_to)]) for c in cumulative) if reached else float("inf")
        reference = seconds if reference is None else reference
        final = statistics.mean(statistics.mean(sorted(c.items())[-args.last:][i][1] for i in range(args.last))
                                for c in curves[name])
        wall = statistics.median(w for _, w in timed[name])
        seeds = ", ".join("—" if s is None else str(s) for s in per_seed)
        ratio = f"{reference / seconds:.2f}x" if reached else "not reached"
        print(f"| {name} | {steps_to if reached else '—'} ({seeds}) | {seconds:.1f} | {ratio} | {per_step:.3f} | "
              f"{final:.3f} | {wall:.1f} |")


if __name__ == "__main__":
    main()
