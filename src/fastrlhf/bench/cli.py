"""`fastrlhf bench rollout`: the rollout engine vs transformers `generate` (bench/rollout.py) on a random
4 M model or, with `--model DIR --dtype fp32|bf16|fp16`, on the user's own model directory; with
`--speculative`, plain vs speculative rollouts on a GRPO-shaped workload (bench/speculative.py).
`fastrlhf bench make-model --shape 23m|135m OUT_DIR` writes a benchmark model directory (bench/shapes.py)."""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path

from fastrlhf.errors import UserError
from fastrlhf.files import atomic_path

SECTION = "## Rollout engine vs transformers generate"
SPEC_SECTION = "## Speculative rollouts (GRPO n = 8, {task} task, {scenario})"


def register(subparsers) -> None:
    p = subparsers.add_parser("bench", help="benchmarks (both sides measured in the same run)")
    sub = p.add_subparsers(dest="bench", metavar="BENCH", parser_class=type(p))
    sub.required = True
    r = sub.add_parser("rollout", help="our rollout engine vs transformers generate on the same weights")
    r.add_argument("--model", metavar="DIR",
                   help="HF model directory to benchmark (default: a random 4 M Llama; see `fastrlhf bench make-model`)")
    r.add_argument("--dtype", choices=["fp32", "bf16", "fp16"], default="fp32",
                   help="precision of the weights and compute, the same on both sides")
    r.add_argument("--batch-sizes", type=int, nargs="+", default=None,
                   help="sequences per generate call (default 1 8 64; with --speculative 8 32 128 = prompts × 8)")
    r.add_argument("--new-tokens", type=int, default=None,
                   help="new tokens per sequence (default 128; with --speculative the task's: 96 worked_addition, 16 arithmetic)")
    r.add_argument("--repeats", type=int, default=3)
    r.add_argument("--warmups", type=int, default=1,
                   help="--speculative: untimed rounds before the timed ones (the adaptive strategy profiles and explores in them)")
    r.add_argument("--compile", choices=["off", "on", "both"], default="off",
                   help="torch.compile our decode step (cold compiles take minutes on CPU)")
    r.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    r.add_argument("--write", metavar="FILE", help="replace the rollout section of this markdown file (e.g. docs/benchmarks.md)")
    r.add_argument("--speculative", action="store_true",
                   help="plain vs n-gram vs draft-model vs adaptive speculation and fixed γ on the built-in policy, n = 8 per prompt")
    r.add_argument("--task", choices=["worked_addition", "arithmetic"], default="worked_addition",
                   help="--speculative workload: long worked answers (default) or bare 3-4-token answers")
    r.add_argument("--seen-prompts", action="store_true",
                   help="--speculative later-epoch scenario: drafters remember earlier responses to the same prompts")
    r.add_argument("--gammas", type=int, nargs="+", default=[1, 2, 4, 8], help="fixed draft lengths (--speculative)")
    r.add_argument("--draft-layers", type=int, default=1, help="layers kept in the draft model (--speculative)")
    r.add_argument("--distill-epochs", type=int, default=20, help="distillation epochs of the draft, 0 = truncated only (--speculative)")
    r.set_defaults(func=run_rollout)
    m = sub.add_parser("make-model", help="write a benchmark model directory (random-init, seeded) both benchmarks load")
    m.add_argument("--shape", choices=["builtin", "23m", "135m"], required=True,
                   help="23m: hidden 512, 8 layers; 135m: SmolLM-135M's proportions; builtin: copy of the shipped policy")
    m.add_argument("--seed", type=int, default=0)
    m.add_argument("out_dir", metavar="OUT_DIR")
    m.set_defaults(func=run_make_model)


def run_make_model(args: argparse.Namespace) -> int:
    from fastrlhf.bench.shapes import make_model

    return make_model(args.shape, args.out_dir, args.seed)


def run_rollout(args: argparse.Namespace) -> int:
    from fastrlhf.bench.rollout import BenchSpec, check_model_dir, markdown_table, run, section_heading

    if args.batch_sizes is None:
        args.batch_sizes = [8, 32, 128] if args.speculative else [1, 8, 64]
    if args.new_tokens is None and not args.speculative:
        args.new_tokens = 128
    for name in ("batch_sizes", "new_tokens", "repeats", "threads", "gammas", "draft_layers"):
        values = getattr(args, name)
        if values is None:
            continue
        if any(v < 1 for v in (values if isinstance(values, list) else [values])):
            raise UserError(f"--{name.replace('_', '-')} must be ≥ 1")
    command = "fastrlhf " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv[0].endswith("fastrlhf") else "fastrlhf bench rollout"
    if args.speculative:
        if args.model is not None or args.dtype != "fp32":
            raise UserError("--model / --dtype apply to the engine vs transformers benchmark, not --speculative")
        return run_speculative(args, command)
    modes = {"off": (False,), "on": (True,), "both": (False, True)}[args.compile]
    spec = BenchSpec(batch_sizes=tuple(args.batch_sizes), new_tokens=args.new_tokens, repeats=args.repeats,
                     compile_modes=modes, threads=args.threads, model_dir=args.model, dtype=args.dtype)
    check_model_dir(spec)  # a bad --model is one line, before anything is loaded or timed
    print(f"benchmarking rollout: batch sizes {spec.batch_sizes}, {spec.new_tokens} new tokens, {spec.repeats} repeats", file=sys.stderr)
    rows, info = run(spec, log=lambda line: print(line, file=sys.stderr))
    return _publish(markdown_table(rows, spec, info, command), args.write, section_heading(spec, info))


def run_speculative(args: argparse.Namespace, command: str) -> int:
    from fastrlhf.bench.speculative import SpecBenchSpec, markdown_table, run

    if args.distill_epochs < 0:
        raise UserError("--distill-epochs must be ≥ 0")
    if args.warmups < 0:
        raise UserError("--warmups must be ≥ 0")
    spec = SpecBenchSpec(batch_sizes=tuple(args.batch_sizes), task=args.task, new_tokens=args.new_tokens, repeats=args.repeats,
                         warmups=args.warmups, gammas=tuple(args.gammas), draft_layers=args.draft_layers, distill_epochs=args.distill_epochs,
                         threads=args.threads, seen_prompts=args.seen_prompts)
    print(f"benchmarking speculative rollouts: batch sizes {spec.batch_sizes}, γ {spec.gammas}, {spec.repeats} repeats", file=sys.stderr)
    rows, info = run(spec, log=lambda line: print(line, file=sys.stderr))
    scenario = "prompts seen an epoch earlier" if args.seen_prompts else "first epoch"
    return _publish(markdown_table(rows, spec, info, command), args.write, SPEC_SECTION.format(task=args.task, scenario=scenario))


def _publish(table: str, write: str | None, heading: str) -> int:
    """Print the table; with --write, also replace its section in that markdown file."""
    print(table)
    if write:
        write_section(Path(write), heading, table)
        print(f"wrote {write}", file=sys.stderr)
    return 0


def write_section(path: Path, heading: str, body: str) -> None:
    """Replace (or append) the section under `heading` in a markdown file, atomically."""
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    start = text.find(heading)
    if start == -1:
        text = text.rstrip("\n") + f"\n\n{heading}\n\n{body}"
    else:
        end = text.find("\n## ", start + len(heading))
        text = text[:start] + f"{heading}\n\n{body}" + (text[end:] if end != -1 else "")
    with atomic_path(path) as tmp:
        tmp.write_text(text)
