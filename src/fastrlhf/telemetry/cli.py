"""`fastrlhf plot RUN_DIR [--out FILE]`: training curves of a run as a PNG; prints the PNG's path."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    """Add the `plot` subcommand to the top-level parser's subparsers."""
    p = subparsers.add_parser("plot", help="plot reward / KL / length curves of a run as PNG")
    p.add_argument("run_dir", metavar="RUN_DIR", help="run directory holding metrics.jsonl")
    p.add_argument("--out", metavar="FILE", help="PNG path (default: RUN_DIR/metrics.png)")
    p.set_defaults(func=cmd_plot)


def cmd_plot(args: argparse.Namespace) -> int:
    """Write the plot and print where it went."""
    from fastrlhf.telemetry.plot import plot_run

    print(plot_run(args.run_dir, args.out))
    return 0
