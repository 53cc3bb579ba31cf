"""Rollout-worker idle time on `worked_addition` (long-tailed lengths), 2 rollout workers:
static equal split vs token-balanced assignment vs balanced + migration, in one run.

    python benchmarks/rollout_balance.py                       # 16 steps, 64 training prompts (4 epochs), 3 repeats
    python benchmarks/rollout_balance.py --steps 24 --train-size 96

Each configuration is a real GRPO run (runtime.backend=ray, 2 rollout workers + 1 trainer rank, 1 CPU
thread each) from the same seed; the samples are identical in all three (seeds follow the prompt,
not the worker), so only the placement differs. Per step the pool logs `rollout/idle_s`: summed
over the workers, the time each waited for the slowest (the slowest worker's engine seconds − its
own), and `rollout/overhead_s`: the call's wall time − the slowest worker's engine seconds. The training prompts repeat every train_size / prompts_per_step steps, so from the
second epoch on the token-balanced split has a per-prompt length history (EWMA); steps of the first
epoch are excluded from the medians (`--skip`, default one epoch).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

CONFIGS = {
    "static": ["runtime.balance=static", "runtime.migrate_threshold=0"],
    "tokens": ["runtime.balance=tokens", "runtime.migrate_threshold=0"],
    "tokens+migration": ["runtime.balance=tokens", "runtime.migrate_threshold=0.3"],
}


def run(name: str, extra: list[str], args, root: Path) -> list[dict]:
    from fastrlhf.config import load_config
    from fastrlhf.train.loop import train

    overrides = ["task.name=worked_addition", f"task.train_size={args.train_size}", f"train.steps={args.steps}",
                 f"train.prompts_per_step={args.prompts}", f"rollout.samples_per_prompt={args.samples}",
                 "train.eval_every=0", "task.eval_size=8", "train.checkpoint_every=0", f"train.run_dir={root / name}",
                 "runtime.backend=ray", "runtime.rollout_workers=2", "runtime.trainer_workers=1",
                 f"runtime.round_seconds={args.round_seconds}", *extra]
    return train(load_config(None, overrides), show_progress=False).history


def median(rows: list[dict], key: str) -> float:
    return statistics.median(r.get(key, 0.0) for r in rows)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--train-size", type=int, default=64)
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--round-seconds", type=float, default=0.05)
    parser.add_argument("--skip", type=int, default=None, help="first steps left out of the medians (default: one epoch)")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each configuration, interleaved")
    parser.add_argument("--only", action="append", choices=list(CONFIGS), help="run only these configurations")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="an extra config override for every configuration (e.g. runtime.migrate_threshold=0.1)")
    args = parser.parse_args(argv)
    skip = args.skip if args.skip is not None else args.train_size // args.prompts
    if skip >= args.steps:
        sys.exit(f"--steps {args.steps} must exceed the skipped first epoch ({skip} steps)")
    results: dict[str, list[dict]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.repeats):  # interleaved, so a slower minute of the machine hits every config
            for name, extra in CONFIGS.items():
                if args.only is None or name in args.only:
                    rows = run(f"{name}-{repeat}", [*extra, *args.set], args, Path(tmp))[skip:]
                    results.setdefault(name, []).extend(rows)
    base = median(results.get("static", next(iter(results.values()))), "rollout/idle_s")
    print(f"worked_addition, 2 rollout workers, {args.prompts} prompts x {args.samples} samples, "
          f"medians over steps {skip + 1}-{args.steps} of {args.repeats} interleaved runs per configuration\n")
    print("| assignment | idle s / step (sum over workers) | idle vs static | call overhead s | generate s | step s | migrated / step |")
    print("|---|---|---|---|---|---|---|")
    for name, rows in results.items():
        idle = median(rows, "rollout/idle_s")
        print(f"| {name} | {idle:.3f} | {idle / base:.2f}x | {median(rows, 'rollout/overhead_s'):.3f} | "
              f"{median(rows, 'time/actor.generate'):.3f} | {median(rows, 'time/step'):.3f} | "
              f"{median(rows, 'rollout/migrated'):.1f} |")


if __name__ == "__main__":
    main()
