"""`audio-monitor check`: the config and every rule it names, valid or not; nothing is started."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from monitor.commands.common import config_args, load_config_or_exit
from monitor.yamlsource import ValidationFailed


def add_parser(sub: Any) -> None:
    config_args(sub.add_parser("check", help="validate the config and its rules, then exit 0 (valid) or 1"))


def run(args: argparse.Namespace) -> int:
    """Validate the config and every rule it names: "OK" must mean the daemon would start with them."""
    from monitor.rules import load_rules  # noqa: PLC0415 (an ImportError is a bug: let it surface, never skip the rules)

    config = load_config_or_exit(args.config, args.overrides)
    counts: dict[Path, int] = {}
    failed = False
    for room in config.rooms:  # every room's rules (rooms may share one path: read it once)
        if room.rules in counts:
            continue
        try:
            counts[room.rules] = len(load_rules(room.rules).rules)
        except ValidationFailed as exc:
            counts[room.rules] = 0
            failed = True
            for problem in exc.problems:
                print(problem, file=sys.stderr)
    if failed:
        return 1
    src = args.config or "defaults"
    if config.multi_room:
        rooms = ", ".join(f"{r.id} ({counts[r.rules]} rule(s))" for r in config.rooms)
        print(f"{src}: OK (node {config.node_id}, {len(config.rooms)} rooms: {rooms})")
    else:
        print(f"{src}: OK (node {config.node_id}, {counts[config.rules]} rule(s) from {config.rules})")
    return 0
