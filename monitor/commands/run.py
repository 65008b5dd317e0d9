"""`audio-monitor run`: the daemon."""

from __future__ import annotations

import argparse
from typing import Any

from monitor.commands.common import config_args, load_config_or_exit


def add_parser(sub: Any) -> None:
    config_args(sub.add_parser("run", help="run the daemon"))


def run(args: argparse.Namespace) -> int:
    from monitor.logsetup import setup_logging

    # before the config names its level: its problems are ERROR lines (a journal priority) like
    # every later failure at start
    setup_logging("info")
    config = load_config_or_exit(args.config, args.overrides, as_log=True)
    setup_logging(config.log.level)
    from monitor.daemon import run_daemon

    return run_daemon(config)
