"""The Async RLHF paper's off-policyness study on the built-in preference task:
`python scripts/offpolicy_study.py`.

"N off-policy steps" (`train.off_policy_steps=N`): generate N steps' rollouts with one policy, then
take the N steps — the n-th is n − 1 updates stale (N = 1 is on-policy). For N in {1, 2, 4, 8, 16}
and PPO, RLOO and online DPO (each with its recipe from scripts/preference_results.py, RL against
the shipped learned reward model), several seeds: held-out gold reward and KL to the SFT policy
every `--eval-every` steps. Prints a table (per algorithm and N: final gold reward and KL, mean ± sd
over seeds; the share of the on-policy run's gold-reward gain kept) and draws gold reward vs KL
(`--plot`), one curve per N — the paper's figure 3 in this task's terms.

Runs go to `--runs/ALGO/nN/seedS`; a finished run (summary.json) is reused unless `--fresh`.
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from preference_results import COMMON, RECIPES  # noqa: E402 - the recipes live with the per-algorithm table

from fastrlhf.config import load_config  # noqa: E402
from fastrlhf.train.loop import train  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--algorithms", nargs="+", default=["ppo", "rloo", "online_dpo"], choices=list(RECIPES))
    ap.add_argument("--n", nargs="+", type=int, default=[1, 2, 4, 8, 16])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--steps", type=int, default=192)
    ap.add_argument("--eval-every", type=int, default=32)
    ap.add_argument("--runs", type=Path, default=Path("runs/offpolicy"))
    ap.add_argument("--plot", type=Path, default=None)
    ap.add_argument("--table", type=Path, default=None)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--fresh", action="store_true")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="extra overrides for every run")
    return ap.parse_args(argv)


def overrides(algo: str, n: int, seed: int, args) -> list[str]:
    return [*COMMON, *RECIPES[algo], f"train.off_policy_steps={n}", f"train.seed={seed}", f"train.steps={args.steps}",
            f"train.eval_every={args.eval_every}", f"train.run_dir={args.runs / algo / f'n{n}' / f'seed{seed}'}",
            *args.set]


def run(algo: str, n: int, seed: int, args) -> dict:
    run_dir = args.runs / algo / f"n{n}" / f"seed{seed}"
    summary_path = run_dir / "summary.json"
    if summary_path.is_file() and not args.fresh:
        return json.loads(summary_path.read_text())
    shutil.rmtree(run_dir, ignore_errors=True)
    started = time.perf_counter()
    train(load_config(None, overrides(algo, n, seed, args)), show_progress=False)
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    points = [{"step": r["step"], "kl": r["eval/kl"], "gold": r["eval/gold_reward"], "rm": r.get("eval/reward")}
              for r in rows if "eval/kl" in r]
    staleness = [r["staleness_mean"] for r in rows if "staleness_mean" in r]
    summary = {"algo": algo, "n": n, "seed": seed, "seconds": time.perf_counter() - started, "points": points,
               "mean_staleness": sum(staleness) / max(len(staleness), 1),
               "command": "fastrlhf train " + shlex.join(overrides(algo, n, seed, args))}
    summary_path.write_text(json.dumps(summary, indent=1))
    return summary


def mean_sd(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.3f} ± {sd:.3f}"


def table(results: dict, args) -> str:
    lines = ["| algorithm | N | mean staleness | gold reward (final) | KL to SFT (final) | gain kept vs N = 1 |",
             "|---|---|---|---|---|---|"]
    for algo in args.algorithms:
        sft = statistics.mean(r["points"][0]["gold"] for r in results[algo][args.n[0]])
        on_policy_gain = statistics.mean(r["points"][-1]["gold"] for r in results[algo][args.n[0]]) - sft
        for n in args.n:
            runs = results[algo][n]
            gold = [r["points"][-1]["gold"] for r in runs]
            kl = [r["points"][-1]["kl"] for r in runs]
            kept = (statistics.mean(gold) - sft) / on_policy_gain if on_policy_gain > 0 else float("nan")
            lines.append(f"| {algo} | {n} | {statistics.mean(r['mean_staleness'] for r in runs):.2f} | {mean_sd(gold)} "
                         f"| {mean_sd(kl)} | {kept:.0%} |")
    return "\n".join(lines)


def plot(results: dict, args) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(args.algorithms), figsize=(4.2 * len(args.algorithms), 3.8), sharey=True)
    colours = plt.cm.viridis([i / max(len(args.n) - 1, 1) for i in range(len(args.n))])
    for ax, algo in zip(axes if len(args.algorithms) > 1 else [axes], args.algorithms):
        for colour, n in zip(colours, args.n):
            runs = results[algo][n]
            count = min(len(r["points"]) for r in runs)
            kl = [statistics.mean(r["points"][i]["kl"] for r in runs) for i in range(count)]
            gold = [statistics.mean(r["points"][i]["gold"] for r in runs) for i in range(count)]
            ax.plot(kl, gold, marker="o", ms=3, color=colour, label=f"N = {n}")
        ax.set(title=algo, xlabel="KL(π ‖ π_SFT), nats per sequence")
        ax.grid(alpha=0.3)
    (axes[0] if len(args.algorithms) > 1 else axes).set_ylabel("gold reward (held-out)")
    (axes[-1] if len(args.algorithms) > 1 else axes).legend(fontsize=8, title="off-policy steps")
    fig.suptitle(f"N off-policy steps on the preference task (mean of {len(args.seeds)} seeds, "
                 f"evaluations every {args.eval_every} steps)", fontsize=10)
    fig.tight_layout()
    args.plot.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.plot, dpi=110)


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    results: dict = {algo: {n: [] for n in args.n} for algo in args.algorithms}
    for seed in args.seeds:  # seeds outermost: a stopped study already has whole seeds
        for algo in args.algorithms:
            for n in args.n:
                s = run(algo, n, seed, args)
                results[algo][n].append(s)
                print(f"{algo} N={n} seed={seed}: gold {s['points'][0]['gold']:.3f} -> {s['points'][-1]['gold']:.3f}, "
                      f"KL {s['points'][-1]['kl']:.2f}, {s['seconds']:.0f} s", flush=True)
    text = table(results, args)
    print(text)
    if args.table:
        args.table.write_text(text + "\n")
    if args.plot:
        plot(results, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
