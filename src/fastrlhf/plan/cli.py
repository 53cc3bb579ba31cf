"""`fastrlhf plan` (search a plan) and `fastrlhf simulate PLAN.json` (re-simulate a saved plan).

Outputs are written to temporary files beside their destinations (`files.atomic_path`) and renamed
only once all of them have been written, so a failed run leaves no partial file behind.
"""

from __future__ import annotations

import argparse
import contextlib
import os

from fastrlhf.errors import UserError
from fastrlhf.files import atomic_path
from fastrlhf.plan.graphs import GRAPHS
from fastrlhf.plan.hardware import load_cluster
from fastrlhf.plan.model_spec import load_model_spec
from fastrlhf.plan.plan import Workload, load_plan

GB = 1e9


def register(subparsers) -> None:
    p = subparsers.add_parser("plan", help="search an execution plan (ReaLHF) for an RLHF job")
    p.add_argument("--algo", choices=sorted(GRAPHS), default="ppo")
    p.add_argument("--actor", required=True, help="preset (llama2-7b, qwen2.5-7b, ...) or config.json")
    p.add_argument("--critic", help="critic model (default: the actor's shape)")
    p.add_argument("--ref", help="reference model (default: the actor)")
    p.add_argument("--reward", help="reward model (default: the critic's shape)")
    p.add_argument("--cluster", required=True, help="e.g. 2x8xH100, 8xA100-80G, or a YAML file")
    p.add_argument("--batch", type=int, default=512, help="sequences per iteration")
    p.add_argument("--prompt-len", type=int, default=256)
    p.add_argument("--gen-len", type=int, default=256)
    p.add_argument("--zero-stage", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--time-limit", type=float, default=50.0, help="search seconds (incl. baselines)")
    p.add_argument("--max-steps", type=int, default=2_000_000, help="annealing steps")
    p.add_argument("--out", default="plan.json", help="plan JSON path")
    p.add_argument("--gantt", help="Gantt PNG path (default: OUT with .png)")
    p.set_defaults(func=cmd_plan)

    s = subparsers.add_parser("simulate", help="simulate a saved (possibly edited) plan JSON")
    s.add_argument("plan", help="plan JSON written by `fastrlhf plan`")
    s.add_argument("--gantt", help="write a Gantt PNG of one iteration here")
    s.add_argument("--iters", type=int, default=None,
                   help="iterations to simulate (>= 2; default 3, or max(12, 2K + 4) with "
                        "--max-staleness K)")
    s.add_argument("--max-staleness", type=int, default=0, metavar="K",
                   help="asynchronous RLHF: rollouts of iteration i may use the weights trained in "
                        "iteration i-1-K (default 0: synchronous)")
    s.set_defaults(func=cmd_simulate)


def cmd_plan(args: argparse.Namespace) -> int:
    from fastrlhf.plan.planner import build_models, run_planner

    cluster = load_cluster(args.cluster)
    specs = {k: load_model_spec(getattr(args, k)) if getattr(args, k) else None
             for k in ("actor", "critic", "ref", "reward")}
    models = build_models(args.algo, **specs)
    workload = Workload(args.batch, args.prompt_len, args.gen_len, args.zero_stage)
    report = run_planner(args.algo, models, cluster, workload, args.seed, args.time_limit,
                         args.max_steps)
    print(f"{args.algo} on {cluster.describe()}: batch {workload.batch}, prompt "
          f"{workload.prompt_len}, generation {workload.gen_len}")
    print(format_table(report.plan, report.evaluation))
    print(f"iteration time  searched {report.simulation.iteration_time:8.3f} s "
          f"(search {report.search_seconds:.1f} s, best found after {report.seconds_to_best:.1f} s,"
          f" {report.evaluations} plans simulated)")
    print(f"search stopped: {report.stop_reason} ({report.stop_detail})")
    for name, value in report.baselines.items():
        speedup = value / report.simulation.iteration_time
        shown = f"{value:8.3f} s  speed-up {speedup:.2f}x" if value < float("inf") else "infeasible"
        print(f"  baseline {name:14s} {shown}")
    gantt = args.gantt or os.path.splitext(args.out)[0] + ".png"
    _write_outputs(report.plan.to_json(), args.out, report.simulation, gantt)
    print(f"wrote {args.out} and {gantt}")
    return 0


def cmd_simulate(args: argparse.Namespace) -> int:
    from fastrlhf.plan.planner import simulate_plan

    from fastrlhf.plan.async_compare import iterations_for

    stale = args.max_staleness
    iters = args.iters if args.iters is not None else (3 if stale == 0 else iterations_for(stale))
    if stale < 0:
        raise UserError("--max-staleness must be >= 0")
    if iters < max(2, 2 * stale + 2):
        raise UserError(f"--iters must be >= {max(2, 2 * stale + 2)} (the iteration time is a "
                        f"steady-state period{' after warm-up and before drain' if stale else ''})")
    plan = load_plan(args.plan)
    ev, evaluation, sim = simulate_plan(plan, iters)
    if stale:
        from fastrlhf.plan.simulator import simulate

        sim = simulate(ev, evaluation, plan.placements(), iters, max_staleness=stale)
    print(format_table(plan, evaluation))
    if stale:
        print(f"max staleness {stale}: rollouts may use weights up to {stale} update(s) old "
              f"(fastest schedule found with bound {sim.schedule_staleness}, {iters} iterations)")
    print(f"iteration time {sim.iteration_time:.3f} s, first iteration {sim.first_iteration:.3f} s,"
          f" accelerator-seconds/iteration {sim.accelerator_seconds:.1f}"
          f" (busy {sim.busy_accelerator_seconds:.1f})")
    util = sim.utilisation
    print(f"GPU utilisation min {min(util):.0%} mean {sum(util) / len(util):.0%} max {max(util):.0%}")
    if args.gantt:
        _write_outputs(None, None, sim, args.gantt)
        print(f"wrote {args.gantt}")
    return 0


def format_table(plan, evaluation) -> str:
    head = f"{'call':18s} {'mesh':>9s} {'dp':>3s} {'tp':>3s} {'pp':>3s} {'micro':>5s} " \
           f"{'dec.b':>5s} {'time s':>8s} {'GB/GPU':>7s}"
    rows = [head, "-" * len(head)]
    for call, cp, est in zip(plan.calls, plan.assignment, evaluation.calls):
        mesh = f"{cp.mesh.start}+{cp.mesh.size}"
        rows.append(f"{call.name:18s} {mesh:>9s} {cp.layout.dp:3d} {cp.layout.tp:3d} "
                    f"{cp.layout.pp:3d} {est.n_micro:5d} {est.decode_batch:5d} {est.time:8.3f} "
                    f"{est.memory / GB:7.1f}")
    for step in evaluation.steps:
        if step.kind != "transfer":
            rows.append(f"  + {step.kind} for {plan.calls[step.consumer].name}: {step.time:.3f} s")
    if evaluation.offloaded:
        rows.append(f"  offloaded between calls: {', '.join(evaluation.offloaded)}")
    return "\n".join(rows)


def _write_outputs(text: str | None, path: str | None, sim, gantt: str | None) -> None:
    """Write every output to a temp file first (files.atomic_path); rename them only when all were written."""
    from fastrlhf.plan.gantt import draw_gantt

    for out in ([path] if text is not None else []) + ([gantt] if gantt else []):
        directory = os.path.dirname(os.path.abspath(out))
        if not os.path.isdir(directory):
            raise UserError(f"output directory {directory} does not exist")
    try:
        with contextlib.ExitStack() as pending:  # an error anywhere deletes every temp file, renames none
            if text is not None:
                pending.enter_context(atomic_path(path)).write_text(text + "\n")
            if gantt:
                draw_gantt(sim, str(pending.enter_context(atomic_path(gantt))))
    except OSError as exc:
        raise UserError(f"cannot write output: {exc}") from None
