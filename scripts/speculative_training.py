"""GRPO with and without speculative rollouts: `python scripts/speculative_training.py`.

Runs the default job (`fastrlhf train`, GRPO on the built-in arithmetic task, seed 0) once per
`rollout.speculative` setting, sequentially, then writes a plot of the per-step training reward and
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
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--runs", type=Path, default=Path("runs/speculative"))
    ap.add_argument("--plot", type=Path, default=None)
    ap.add_argument("--threads", type=int, default=2)
    return ap.parse_args(argv)


def overrides(label: str, args) -> list[str]:
    slug = label.split(" ")[0]
    return [*SETTINGS[label], f"train.steps={args.steps}", f"train.run_dir={args.runs / slug}"]


def history(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    rows, curves = [], {}
    for label in SETTINGS:
        run_dir = args.runs / label.split(" ")[0]
        shutil.rmtree(run_dir, ignore_errors=True)
        started = time.perf_counter()
        result = train(load_config(None, overrides(label, args)), show_progress=False)
        seconds = time.perf_counter() - started
        steps = [m for m in history(run_dir) if "reward" in m]
        curves[label] = (steps, [m for m in history(run_dir) if "eval/reward" in m])
        generate = sum(m["time/actor.generate"] for m in steps)
        accept = [m["spec/acceptance"] for m in steps if "spec/acceptance" in m]
        gamma = [m["spec/gamma"] for m in steps if "spec/gamma" in m]
        rows.append(f"| {label} | {result.start_eval['eval/reward']:.3f} → {result.final_eval['eval/reward']:.3f} | "
                     f"{generate:.1f} s | {seconds:.0f} s | "
                     f"{(sum(accept) / len(accept)) if accept else float('nan'):.2f} | "
                     f"{(sum(gamma) / len(gamma)) if gamma else 0:.2f} | `fastrlhf train {shlex.join(overrides(label, args))}` |")
        print(rows[-1], flush=True)
    print("| rollout.speculative | held-out accuracy | time in actor.generate | whole run | acceptance | mean γ | command |")
    print("|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    if args.plot:
        plot(curves, args.plot)
    return 0


def plot(curves, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (train_ax, eval_ax) = plt.subplots(1, 2, figsize=(11, 4))
    for label, (steps, evals) in curves.items():
        rewards = [m["reward"] for m in steps]
        smooth = [sum(rewards[max(0, i - 9): i + 1]) / len(rewards[max(0, i - 9): i + 1]) for i in range(len(rewards))]
        train_ax.plot([m["step"] for m in steps], smooth, label=label)
        eval_ax.plot([m["step"] for m in evals], [m["eval/reward"] for m in evals], marker="o", label=label)
    train_ax.set(xlabel="step", ylabel="training reward (10-step mean)", title="GRPO, default job")
    eval_ax.set(xlabel="step", ylabel="held-out greedy accuracy")
    for ax in (train_ax, eval_ax):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    sys.exit(main())
