"""Every algorithm on the built-in preference task: `python scripts/preference_results.py`.

From the same shipped SFT policy and the same shipped learned reward model, runs PPO, GRPO, RLOO,
REINFORCE++ and online DPO (RL against the *learned* RM) and offline DPO (on the shipped preference
pairs), each with `fastrlhf train task.name=preference algorithm.name=NAME <recipe>` — the command
is printed next to each result. Evaluation (held-out prompts, seeded samples): gold reward, learned-
RM reward and KL to the SFT policy, every `--eval-every` steps, so each run traces a reward-vs-KL
curve. Writes a markdown table (stdout and `--table`) and a reward-vs-KL plot (`--plot`).

Runs go to `--runs/NAME`; an existing finished run is reused (pass `--fresh` to redo it).
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

# name -> the overrides of its recipe (shared ones in COMMON)
RECIPES: dict[str, list[str]] = {
    "ppo": ["algorithm.name=ppo", "rollout.samples_per_prompt=4", "train.lr=1e-4", "algorithm.critic_lr=1e-3",
            "train.mini_batches=2"],
    "grpo": ["algorithm.name=grpo"],
    "rloo": ["algorithm.name=rloo"],
    "reinforce_pp": ["algorithm.name=reinforce_pp", "algorithm.kl_in=reward"],
    "online_dpo": ["algorithm.name=online_dpo", "rollout.samples_per_prompt=4", "train.lr=1e-4"],
    "dpo": ["algorithm.name=dpo", "train.prompts_per_step=64", "train.lr=1e-4"],
}
COMMON = ["task.name=preference", "train.checkpoint_every=0"]


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--algorithms", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--eval-every", type=int, default=25)
    ap.add_argument("--runs", type=Path, default=Path("runs/preference"))
    ap.add_argument("--table", type=Path, default=None, help="also write the markdown table here")
    ap.add_argument("--plot", type=Path, default=None, help="reward-vs-KL plot (PNG)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--fresh", action="store_true")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="extra overrides for every run")
    return ap.parse_args(argv)


def overrides(name: str, args) -> list[str]:
    return [*COMMON, *RECIPES[name], f"train.steps={args.steps}", f"train.eval_every={args.eval_every}",
            f"train.run_dir={args.runs / name}", *args.set]


def run(name: str, args) -> dict:
    run_dir = args.runs / name
    summary_path = run_dir / "summary.json"
    if summary_path.is_file() and not args.fresh:
        return json.loads(summary_path.read_text())
    shutil.rmtree(run_dir, ignore_errors=True)
    started = time.perf_counter()
    result = train(load_config(None, overrides(name, args)), show_progress=False)
    summary = {"name": name, "seconds": time.perf_counter() - started, "start": result.start_eval,
               "final": result.final_eval, "command": "fastrlhf train " + shlex.join(overrides(name, args))}
    summary_path.write_text(json.dumps(summary, indent=1))
    return summary


def curve(run_dir: Path) -> list[dict]:
    """The eval points of a run, in step order (each has eval/kl, eval/gold_reward, eval/reward)."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if "eval/kl" in r]


def table(summaries: list[dict]) -> str:
    lines = ["| algorithm | gold reward before → after | learned-RM reward before → after | KL to SFT (nats) | wall time | command |",
             "|---|---|---|---|---|---|"]
    for s in summaries:
        a, b = s["start"], s["final"]
        rm = (f"{a['eval/reward']:.3f} → {b['eval/reward']:.3f}" if "eval/reward" in b else "—")
        lines.append(f"| {s['name']} | {a['eval/gold_reward']:.3f} → **{b['eval/gold_reward']:.3f}** | {rm} | "
                     f"{b['eval/kl']:.2f} | {s['seconds'] / 60:.1f} min | `{s['command']}` |")
    return "\n".join(lines)


def plot(summaries: list[dict], args) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (gold, learned) = plt.subplots(1, 2, figsize=(11, 4.2), sharex=True)
    for s in summaries:
        points = curve(args.runs / s["name"])
        kl = [p["eval/kl"] for p in points]
        gold.plot(kl, [p["eval/gold_reward"] for p in points], marker="o", ms=3, label=s["name"])
        if all("eval/reward" in p for p in points):
            learned.plot(kl, [p["eval/reward"] for p in points], marker="o", ms=3, label=s["name"])
    gold.set(xlabel="KL(π ‖ π_SFT), nats per sequence", ylabel="gold reward (held-out)", title="what 'humans' prefer")
    learned.set(xlabel="KL(π ‖ π_SFT), nats per sequence", ylabel="learned RM reward", title="what RL optimises")
    gold.legend(fontsize=8)
    for ax in (gold, learned):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    args.plot.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.plot, dpi=110)


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    summaries = []
    for name in args.algorithms:
        print(f"== {name}: fastrlhf train {shlex.join(overrides(name, args))}", flush=True)
        summaries.append(run(name, args))
        s = summaries[-1]
        print(f"   gold {s['start']['eval/gold_reward']:.3f} -> {s['final']['eval/gold_reward']:.3f}, "
              f"KL {s['final']['eval/kl']:.2f}, {s['seconds']:.0f} s", flush=True)
    text = table(summaries)
    print(text)
    if args.table:
        args.table.write_text(text + "\n")
    if args.plot:
        plot(summaries, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
