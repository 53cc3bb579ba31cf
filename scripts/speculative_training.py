"""GRPO with and without speculative rollouts: `python scripts/speculative_training.py`.

Runs GRPO on a built-in task (`--task`: `worked_addition`, whose answers show their working and so
are long and long-tailed, or `arithmetic`, the default job's 3-4-token answers; seed 0, the task's
shipped policy) once per `rollout.speculative` setting, sequentially, then writes a plot of the per-step training reward and
the held-out accuracy of each run (`--plot`) and prints a markdown table: held-out accuracy before /
after, total seconds in actor.generate (the rollout time speculation is meant to cut), whole run,
and mean acceptance / γ. Same seed for all runs: with the deterministic n-gram drafter the sampled
tokens are plain decoding's, so its curve should lie on top of `off`; with the draft model they
follow the same distribution (a different draw).
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import sys
import time
from pathlib import Path

import torch

from fastrlhf.config import load_config
from fastrlhf.train.loop import train

SETTINGS = {
    "off": ["rollout.speculative=off"],
    "ngram (adaptive γ)": ["rollout.speculative=ngram"],
    "adaptive (ngram + draft)": ["rollout.speculative=adaptive"],
}


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", choices=("worked_addition", "arithmetic"), default="worked_addition")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--prompt-pool", type=int, default=0,
                    help="train on a fixed pool of this many of the task's training prompts (a finite dataset, so "
                         "prompts come back every pool/prompts_per_step steps: an epoch); 0 = the endless stream")
    ap.add_argument("--runs", type=Path, default=Path("runs/speculative"))
    ap.add_argument("--plot", type=Path, default=None)
    ap.add_argument("--threads", type=int, default=2)
    return ap.parse_args(argv)


def overrides(label: str, args) -> list[str]:
    slug = label.split(" ")[0]
    pool = [f"task.prompts={pool_file(args)}", f"task.reward=fastrlhf.tasks.{args.task}:reward"] if args.prompt_pool else []
    return [*SETTINGS[label], f"task.name={args.task}", *pool, f"train.steps={args.steps}",
            f"train.run_dir={args.runs / args.task / slug}"]


def pool_file(args) -> Path:
    return args.runs / args.task / f"prompts_{args.prompt_pool}.jsonl"


def write_pool(args) -> None:
    """The first `prompt_pool` training rows of the task (seed 0) as a prompt JSONL file."""
    import importlib

    rows = importlib.import_module(f"fastrlhf.tasks.{args.task}").train_rows(0, args.prompt_pool, 0)
    pool_file(args).parent.mkdir(parents=True, exist_ok=True)
    pool_file(args).write_text("".join(json.dumps(row) + "\n" for row in rows))


def history(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    rows, curves = [], {}
    if args.prompt_pool:
        write_pool(args)
    for label in SETTINGS:
        run_dir = args.runs / args.task / label.split(" ")[0]
        shutil.rmtree(run_dir, ignore_errors=True)
        started = time.perf_counter()
        result = train(load_config(None, overrides(label, args)), show_progress=False)
        seconds = time.perf_counter() - started
        steps = [m for m in history(run_dir) if "reward" in m]
        curves[label] = (steps, [m for m in history(run_dir) if "eval/reward" in m])
        generate = sum(m["time/actor.generate"] for m in steps)
        refresh = sum(m.get("time/draft_refresh", 0.0) for m in steps)  # the draft model's upkeep counts too
        accept = [m["spec/acceptance"] for m in steps if "spec/acceptance" in m]
        gamma = [m["spec/gamma"] for m in steps if "spec/gamma" in m]
        first, last = (sum(m["reward"] for m in part) / len(part) for part in (steps[:20], steps[-20:]))
        held_out = (f"{result.start_eval['eval/reward']:.3f} → {result.final_eval['eval/reward']:.3f}"
                    if result.start_eval else "—")
        rows.append(f"| {label} | {first:.3f} → {last:.3f} | {held_out} | "
                     f"{generate:.1f} s | {refresh:.1f} s | {seconds:.0f} s | "
                     f"{(sum(accept) / len(accept)) if accept else float('nan'):.2f} | "
                     f"{(sum(gamma) / len(gamma)) if gamma else 0:.2f} | `fastrlhf train {shlex.join(overrides(label, args))}` |")
        print(rows[-1], flush=True)
    print("| rollout.speculative | training reward (first → last 20 steps) | held-out accuracy | time in actor.generate "
          "| draft refresh | whole run | acceptance | mean γ | command |")
    print("|---|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    if args.plot:
        plot(curves, args.plot, f"GRPO, {args.task}")
    return 0


def plot(curves, path: Path, title: str) -> None:
    """Left: training reward (10-step mean) per step; right: cumulative rollout seconds (generate +
    draft refresh) per step — the same curve reached in less rollout time is the goal."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (reward_ax, time_ax) = plt.subplots(1, 2, figsize=(11, 4))
    for label, (steps, _evals) in curves.items():
        rewards = [m["reward"] for m in steps]
        smooth = [sum(rewards[max(0, i - 9): i + 1]) / len(rewards[max(0, i - 9): i + 1]) for i in range(len(rewards))]
        reward_ax.plot([m["step"] for m in steps], smooth, label=label)
        spent, total = [], 0.0
        for m in steps:
            total += m["time/actor.generate"] + m.get("time/draft_refresh", 0.0)
            spent.append(total)
        time_ax.plot([m["step"] for m in steps], spent, label=label)
    reward_ax.set(xlabel="step", ylabel="training reward (10-step mean)", title=title)
    time_ax.set(xlabel="step", ylabel="cumulative rollout seconds", title="rollout time (generate + draft refresh)")
    for ax in (reward_ax, time_ax):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    sys.exit(main())
