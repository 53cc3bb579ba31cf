"""The `fastrlhf` command line.

Each subcommand lives in the module that owns its work and registers itself through a
`register(subparsers)` function that sets `func` on its parser; this file only dispatches and turns
`UserError` into a one-line message with exit code 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from fastrlhf.errors import UserError

# subcommand modules, imported lazily so `fastrlhf plan` never needs torch
COMMAND_MODULES = (
    "fastrlhf.train.cli",
    "fastrlhf.train.offline_cli",
    "fastrlhf.bench.cli",
    "fastrlhf.plan.cli",
    "fastrlhf.telemetry.cli",
)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse's own errors: one line, exit 2
        self.exit(2, f"fastrlhf: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="fastrlhf", description="Fast, cheap and sturdy RLHF training.")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    subparsers.required = True
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except UserError as exc:
        print(f"fastrlhf: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("fastrlhf: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
