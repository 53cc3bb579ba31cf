"""Asynchronous rollouts (runtime.max_staleness = 1, 2) vs synchronous: wall time to the same held-out
reward on worked_addition, on this machine — measured in one run.

    python benchmarks/async_speed.py                      # worked_addition, 24 steps, 3 timed repeats
    python benchmarks/async_speed.py --task arithmetic --steps 60 --eval-every 5

Two kinds of run per configuration, because evaluation would otherwise hand the generator free time:
- one **curve run** with a held-out evaluation every `--eval-every` steps: the reward-vs-step curve.
  Samples are a function of the step (train/rollout_queue.py: the version schedule does not depend
  on timing), so this curve is the same whatever the timing;
- `--repeats` **timed runs** without intermediate evaluation (interleaved across configurations):
  the seconds of every step (time/step: waiting for the rollout, scoring and the update; the
  generator's work overlaps it).
Time to target = the median over timed runs of Σ time/step up to the first evaluated step whose
held-out reward reaches the target (default: 0.95 × the synchronous run's final reward). Set-up
(starting Ray and the generator actor) is reported apart, not in that sum.

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

CONFIGS = {
    "sync (2 threads)": ([], 2),
    "sync (1 thread)": ([], 1),
    "async K=1": (["runtime.max_staleness=1"], 2),
    "async K=2": (["runtime.max_staleness=2"], 2),
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


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", default="worked_addition")
    ap.add_argument("--steps", type=int, default=24)
    ap.add_argument("--eval-every", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--target", type=float, default=0.95, help="fraction of the sync run's final held-out reward")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE")
    args = ap.parse_args(argv)
    common = [f"task.name={args.task}", f"train.steps={args.steps}", "train.checkpoint_every=0", *args.set]
    if args.task == "worked_addition":
        common += ["train.prompts_per_step=8", "task.eval_size=100"]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        curves = {}
        for name, (extra, threads) in CONFIGS.items():
            rows, _ = run([*common, *extra, f"train.eval_every={args.eval_every}"], threads, root / f"curve-{len(curves)}")
            curves[name] = {r["step"]: r["eval/reward"] for r in rows if "eval/reward" in r}
        timed = {name: [] for name in CONFIGS}
        for repeat in range(args.repeats):
            for i, (name, (extra, threads)) in enumerate(CONFIGS.items()):
                rows, wall = run([*common, *extra, "train.eval_every=0"], threads, root / f"timed-{repeat}-{i}")
                timed[name].append((rows, wall))
    sync_final = curves["sync (2 threads)"][args.steps]
    target = args.target * sync_final
    one = [r for rows, _ in timed["sync (1 thread)"] for r in rows if "time/step" in r]
    g = statistics.median(r["time/actor.generate"] for r in one)
    t = statistics.median(r["time/step"] - r["time/actor.generate"] for r in one)
    print(f"{args.task}, {args.steps} steps; target held-out reward {target:.3f} (= {args.target} x sync's final "
          f"{sync_final:.3f}); sync 1-thread g = {g:.3f} s, t = {t:.3f} s, bound (g + t) / max(g, t) = "
          f"{(g + t) / max(g, t):.2f}x\n")
    print("| run | steps to target | s to target (Σ time/step, median) | vs sync (2 threads) | s / step (median) "
          "| final held-out reward | wall s incl. set-up (median) |")
    print("|---|---|---|---|---|---|---|")
    reference = None
    for name in CONFIGS:
        reached = [s for s, reward in sorted(curves[name].items()) if s > 0 and reward >= target]
        steps_to = reached[0] if reached else None
        sums = [sum(r["time/step"] for r in rows if "time/step" in r and r["step"] <= (steps_to or args.steps))
                for rows, _ in timed[name]]
        seconds = statistics.median(sums)
        per_step = statistics.median(r["time/step"] for rows, _ in timed[name] for r in rows if "time/step" in r)
        wall = statistics.median(w for _, w in timed[name])
        if reference is None:
            reference = seconds
        ratio = f"{reference / seconds:.2f}x" if steps_to else "not reached"
        print(f"| {name} | {steps_to if steps_to else '—'} | {seconds:.1f} | {ratio} | {per_step:.3f} | "
              f"{curves[name][args.steps]:.3f} | {wall:.1f} |")


if __name__ == "__main__":
    main()
