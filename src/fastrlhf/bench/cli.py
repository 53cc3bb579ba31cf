"""`fastrlhf bench rollout`: the rollout engine vs transformers `generate` (see bench/rollout.py)."""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import tempfile
from pathlib import Path

from fastrlhf.errors import UserError

SECTION = "## Rollout engine vs transformers generate"


def register(subparsers) -> None:
    p = subparsers.add_parser("bench", help="benchmarks (both sides measured in the same run)")
    sub = p.add_subparsers(dest="bench", metavar="BENCH", parser_class=type(p))
    sub.required = True
    r = sub.add_parser("rollout", help="our rollout engine vs transformers generate on the same weights")
    r.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 64])
    r.add_argument("--new-tokens", type=int, default=128)
    r.add_argument("--repeats", type=int, default=3)
    r.add_argument("--compile", choices=["off", "on", "both"], default="off",
                   help="torch.compile our decode step (cold compiles take minutes on CPU)")
    r.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    r.add_argument("--write", metavar="FILE", help="replace the rollout section of this markdown file (e.g. docs/benchmarks.md)")
    r.set_defaults(func=run_rollout)


def run_rollout(args: argparse.Namespace) -> int:
    from fastrlhf.bench.rollout import BenchSpec, markdown_table, run

    for name in ("batch_sizes", "new_tokens", "repeats", "threads"):
        values = getattr(args, name)
        if any(v < 1 for v in (values if isinstance(values, list) else [values])):
            raise UserError(f"--{name.replace('_', '-')} must be ≥ 1")
    modes = {"off": (False,), "on": (True,), "both": (False, True)}[args.compile]
    spec = BenchSpec(batch_sizes=tuple(args.batch_sizes), new_tokens=args.new_tokens, repeats=args.repeats,
                     compile_modes=modes, threads=args.threads)
    command = "fastrlhf " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv[0].endswith("fastrlhf") else "fastrlhf bench rollout"
    print(f"benchmarking rollout: batch sizes {spec.batch_sizes}, {spec.new_tokens} new tokens, {spec.repeats} repeats", file=sys.stderr)
    rows, info = run(spec, log=lambda line: print(line, file=sys.stderr))
    table = markdown_table(rows, spec, info, command)
    print(table)
    if args.write:
        write_section(Path(args.write), SECTION, table)
        print(f"wrote {args.write}", file=sys.stderr)
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
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)
