"""Regenerate the planner results table of docs/plan.md (ReaLHF-style).

For each row: LLaMA-2 actor + critic of the same size (reward = critic shape, ref = actor),
batch 512 sequences, prompt 256, generation 256, H100 nodes of 8; `fastrlhf plan` search with
its default seed and time limit, compared with the three baselines. Prints a markdown table.

    python benchmarks/plan_table.py [--time-limit 50] [--rows 7b-8,70b-128] [--algos ppo,grpo]
"""

from __future__ import annotations

import argparse
import sys

from fastrlhf.plan.bounds import lower_bound
from fastrlhf.plan.evaluate import Evaluator
from fastrlhf.plan.graphs import get_graph
from fastrlhf.plan.hardware import parse_cluster
from fastrlhf.plan.model_spec import PRESETS
from fastrlhf.plan.plan import Workload
from fastrlhf.plan.planner import build_models, run_planner
from fastrlhf.plan.search import candidates

ROWS = {"7b-8": ("llama2-7b", "1x8xH100"), "13b-16": ("llama2-13b", "2x8xH100"),
        "34b-32": ("llama2-34b", "4x8xH100"), "70b-64": ("llama2-70b", "8x8xH100"),
        "70b-128": ("llama2-70b", "16x8xH100")}
BATCH, PROMPT, GEN = 512, 256, 256


def run_row(algo: str, model: str, cluster: str, time_limit: float) -> dict:
    spec = PRESETS[model]
    models, workload = build_models(algo, spec, spec), Workload(BATCH, PROMPT, GEN)
    report = run_planner(algo, models, parse_cluster(cluster), workload, seed=0,
                         time_limit=time_limit)
    ev = Evaluator(get_graph(algo), models, parse_cluster(cluster), workload)
    bound = lower_bound(ev, candidates(ev)).value  # no plan is faster than this
    searched = report.simulation.iteration_time
    base = report.baselines
    best_heuristic = min(base.values())
    command = (f"fastrlhf plan --algo {algo} --actor {model} --critic {model} --cluster {cluster} "
               f"--batch {BATCH} --prompt-len {PROMPT} --gen-len {GEN} --time-limit {time_limit:g}")
    return {"algo": algo, "model": model, "cluster": cluster, "searched": searched, **base,
            "speedup": best_heuristic / searched, "vs_symmetric": base["symmetric"] / searched,
            "search_s": report.search_seconds, "to_best_s": report.seconds_to_best,
            "evals": report.evaluations, "stop": report.stop_reason, "bound": bound,
            "command": command}


def fmt(value: float) -> str:
    return "infeasible" if value == float("inf") else f"{value:.2f}"


def markdown(rows: list[dict]) -> str:
    out = ["| algo | models | cluster | searched s | symmetric s | disaggregated s | per-call s |"
           " vs symmetric | vs best heuristic | search s (best found at) | stopped | plans simulated |"
           " lower bound s | best heuristic / bound |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        out.append(f"| {r['algo']} | {r['model']} x2 | {r['cluster']} | {fmt(r['searched'])} | "
                   f"{fmt(r['symmetric'])} | {fmt(r['disaggregated'])} | {fmt(r['per_call'])} | "
                   f"{r['vs_symmetric']:.3f}x | {r['speedup']:.3f}x | {r['search_s']:.1f} "
                   f"({r['to_best_s']:.1f}) | {r['stop']} | {r['evals']} | {r['bound']:.2f} | "
                   f"{min(r['symmetric'], r['disaggregated'], r['per_call']) / r['bound']:.3f}x |")
    out.append("")
    out += [f"- {r['algo']} {r['model']} {r['cluster']}: `{r['command']}`" for r in rows]
    mean = sum(r["speedup"] for r in rows) / len(rows)
    mean_sym = sum(r["vs_symmetric"] for r in rows) / len(rows)
    mean_room = sum(min(r["symmetric"], r["disaggregated"], r["per_call"]) / r["bound"]
                    for r in rows) / len(rows)
    out.append(f"\nmean speed-up over the best heuristic baseline: {mean:.3f}x; "
               f"over the symmetric baseline: {mean_sym:.3f}x; best heuristic over the lower "
               f"bound (the most any plan could gain): {mean_room:.3f}x")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--time-limit", type=float, default=50.0)
    parser.add_argument("--rows", default=",".join(ROWS))
    parser.add_argument("--algos", default="ppo,grpo")
    args = parser.parse_args(argv)
    rows = []
    for algo in args.algos.split(","):
        for key in args.rows.split(","):
            model, cluster = ROWS[key]
            rows.append(run_row(algo, model, cluster, args.time_limit))
            print(f"done {algo} {key}: {rows[-1]['speedup']:.3f}x in {rows[-1]['search_s']:.1f} s",
                  file=sys.stderr, flush=True)
    print(markdown(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
