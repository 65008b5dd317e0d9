"""`audio-monitor` command line: run, check, devices, replay, eval.

Heavy imports (torch, transformers) happen inside the subcommands that need them, so `check`
and `devices` answer at once.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from monitor import __version__
from monitor.tuning.commands import add_eval_parser, add_replay_parser, cmd_eval, cmd_replay
from monitor.yamlsource import ValidationFailed

log = logging.getLogger("monitor.cli")


def _config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("-c", "--config", type=Path, default=None,
                   help="config file (default: $AUDIO_MONITOR_CONFIG, /etc/audio-monitor/monitor.yaml, configs/monitor.yaml)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE",
                   help="override a config key, e.g. --set windows.hop=2s (repeatable)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="audio-monitor", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"audio-monitor {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("run", help="run the daemon")
    _config_args(p)
    p = sub.add_parser("check", help="validate the config and its rules, then exit 0 (valid) or 1")
    _config_args(p)
    sub.add_parser("devices", help="list audio input devices")
    add_replay_parser(sub, _config_args)
    add_eval_parser(sub, _config_args)
    return parser


def load_config_or_exit(path: Path | None, overrides: Sequence[str], as_log: bool = False):
    """The validated config, or the problems on stderr (`as_log`: as ERROR log lines) and exit 1."""
    from monitor.config import default_config_path, load_config

    path = path or default_config_path()
    try:
        return load_config(path, overrides)
    except ValidationFailed as exc:
        for problem in exc.problems:
            if as_log:
                log.error("%s", problem)
            else:
                print(problem, file=sys.stderr)
        raise SystemExit(1) from None


def cmd_check(args: argparse.Namespace) -> int:
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


def cmd_devices(_args: argparse.Namespace) -> int:
    from monitor.audio.devices import format_devices, list_input_devices

    try:
        print(format_devices(list_input_devices()))
    except OSError as exc:
        print(f"audio: cannot load PortAudio ({exc}); install libportaudio2", file=sys.stderr)
        return 1
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from monitor.logsetup import setup_logging

    # before the config names its level: its problems are ERROR lines (a journal priority) like
    # every later failure at start
    setup_logging("info")
    config = load_config_or_exit(args.config, args.overrides, as_log=True)
    setup_logging(config.log.level)
    from monitor.daemon import run_daemon

    return run_daemon(config)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    handler = {"run": cmd_run, "check": cmd_check, "devices": cmd_devices, "replay": cmd_replay,
               "eval": cmd_eval}[args.command]
    try:
        return handler(args)
    except KeyboardInterrupt:
        return 130
