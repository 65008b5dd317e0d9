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
