"""Simulated asynchronous RLHF (bounded staleness K) vs synchronous plans: the docs/plan.md table.

Jobs: LLaMA-2 7B PPO (actor + critic of the same shape, reference = actor, reward = critic shape)
and 7B GRPO (actor + reward model), batch 512 sequences, prompt 256, generation 256 tokens,
ZeRO-1, on one node of 8 H100 -- the 7b-8 rows of benchmarks/plan_table.py. Per job
(`plan.async_compare.compare_async`): the plan `fastrlhf plan` finds (synchronous, co-location
allowed) and the best disaggregated plan searched for each K in 0, 1, 2, every plan simulated at
every K. Simulated with the cost model of docs/plan.md, not measured; staleness is free here
(no learning-quality cost is modelled). Prints a markdown table.

    python benchmarks/async_sim.py [--search-seconds 20] [--jobs ppo,grpo] [--cluster 1x8xH100]
"""

from __future__ import annotations

import argparse
import sys
import time

from fastrlhf.plan.async_compare import STALENESS, compare_async, describe
from fastrlhf.plan.hardware import parse_cluster
from fastrlhf.plan.model_spec import PRESETS
from fastrlhf.plan.plan import Workload
from fastrlhf.plan.planner import build_models

MODEL, BATCH, PROMPT, GEN = "llama2-7b", 512, 256, 256


def run_job(algo: str, cluster: str, search_seconds: float, gen_len: int):
    spec = PRESETS[MODEL]
    return compare_async(algo, build_models(algo, spec, spec), parse_cluster(cluster),
                         Workload(BATCH, PROMPT, gen_len), STALENESS, search_seconds)


def markdown(results: list[tuple[str, object]]) -> str:
    out = ["| job | plan | K | iteration s | vs sync disaggregated | vs best sync plan | "
           "bound (g+t)/max(g,t) | g s | t s | busiest GPU s/iter |",
           "|---|---|---|---|---|---|---|---|---|---|"]
    notes = []
    for job, cmp in results:
        seen = []
        for r in cmp.rows:
            if r.plan_name not in seen:
                seen.append(r.plan_name)
                notes.append(f"- {job}, {r.plan_name}: {describe(cmp.ev, r.placements)}")
            mark = "" if r.schedule_staleness == r.max_staleness else \
                f" (K={r.schedule_staleness} schedule)"
            bound = f"{r.bound:.2f}x" if r.disaggregated else "n/a (shares GPUs)"
            out.append(f"| {job} | {r.plan_name} | {r.max_staleness} "
                       f"| {r.iteration_time:.2f}{mark} "
                       f"| {cmp.sync_disaggregated / r.iteration_time:.2f}x "
                       f"| {cmp.best_sync / r.iteration_time:.2f}x | {bound} "
                       f"| {r.generate_time:.2f} | {r.rest_time:.2f} | {r.busiest_gpu:.2f} |")
    return "\n".join(out + ["", "Plans (mesh `a+n` = GPUs a..a+n-1: calls, dp x tp x pp):"] + notes)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--search-seconds", type=float, default=20.0,
                        help="time limit of each search (the planner's, and each K's)")
    parser.add_argument("--jobs", default="ppo,grpo")
    parser.add_argument("--cluster", default="1x8xH100")
    parser.add_argument("--gen-len", type=int, default=GEN)
    args = parser.parse_args(argv)
    results = []
    for algo in args.jobs.split(","):
        t0 = time.perf_counter()
        job = f"{algo} 7B {args.cluster}"
        results.append((job, run_job(algo, args.cluster, args.search_seconds, args.gen_len)))
        print(f"done {job} in {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    print(f"batch {BATCH}, prompt {PROMPT}, generation {args.gen_len}; every plan simulated "
          f"over the same iterations at each K\n")
    print(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
