"""`audio-monitor` command line: run, check, devices, replay, eval, compare.

A table of subcommands, each a module of `monitor.commands` (`add_parser`, `run`). Heavy imports
(torch, transformers) happen inside the subcommands that need them, so `check` and `devices`
answer at once.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from monitor import __version__
from monitor.commands import check, compare, devices, replay, run
from monitor.commands import eval as evaluate

COMMANDS = {"run": run, "check": check, "devices": devices, "replay": replay, "eval": evaluate,
            "compare": compare}
"""Subcommand -> its module, in the order `--help` lists them."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="audio-monitor", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"audio-monitor {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in COMMANDS.values():
        module.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return COMMANDS[args.command].run(args)
    except KeyboardInterrupt:
        return 130
