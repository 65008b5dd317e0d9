"""What several subcommands share: the config arguments and loading a config or exiting with its problems."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from monitor.yamlsource import ValidationFailed

log = logging.getLogger("monitor.cli")  # the name the command line's own lines have always carried


def config_args(p: argparse.ArgumentParser) -> None:
    """`-c CONFIG` and `--set KEY.PATH=VALUE`: the same for every subcommand that reads a config."""
    p.add_argument("-c", "--config", type=Path, default=None,
                   help="config file (default: $AUDIO_MONITOR_CONFIG, /etc/audio-monitor/monitor.yaml, configs/monitor.yaml)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE",
                   help="override a config key, e.g. --set windows.hop=2s (repeatable)")


def load_config_or_exit(path: Path | None, overrides: Sequence[str], as_log: bool = False) -> Any:
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


def save_and_show(report: dict[str, Any], out_dir: Path, name: str, plot: Any, table: str) -> bool:
    """Write a tuning report (JSON and plot) into `out_dir` and print its table; False, with one line, when
    the folder cannot be written."""
    from monitor.tuning.reports import write_report  # noqa: PLC0415

    try:
        paths = write_report(report, out_dir, name, plot)
    except OSError as exc:
        log.error("--out: cannot write into %s (%s)", out_dir, exc.strerror or exc)
        return False
    print(table)
    print(f"report: {paths['report']}  plot: {paths['plot']}")
    return True
