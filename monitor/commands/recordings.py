"""What `replay`, `eval` and `compare` share: `--rules`, `--room`, and the config narrowed to that one room.

Both hear recordings as one room of the config would; their lines carry the logger name they
have always had (`monitor.tuning.commands`, as docs/tuning.md shows them).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
from pathlib import Path
from typing import Any

from monitor.commands.common import load_config_or_exit
from monitor.yamlsource import ValidationFailed

log = logging.getLogger("monitor.tuning.commands")

TUNING_EXTRA = 'pip install "audio-monitor[tuning]"'


def room_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--rules", type=Path, default=None, help="a rule file or folder instead of the room's rules")
    p.add_argument("--room", default=None, metavar="ID",
                   help="with a `sources:` config: the room whose rules and audio settings apply (default: the first)")


def _quoted(text: str) -> str:
    """A YAML single-quoted scalar: `--set` values are YAML, and paths may hold `: ` or `#`."""
    return "'" + text.replace("'", "''") + "'"


def setup(args: argparse.Namespace) -> Any:
    """The config narrowed to the room that applies (`--room`, default the first), or None after one line."""
    rooms = setup_rooms(args, every_room=False)
    return None if rooms is None else rooms[0]


def setup_rooms(args: argparse.Namespace, every_room: bool = True) -> list[Any] | None:
    """The config narrowed to each room that applies, or None after one line.

    `--room` names one; without it, `every_room` takes each room of a `sources:` config in turn
    (each with its own rules), else the first.
    """
    from monitor.logsetup import setup_logging
    from monitor.tuning.rooms import RoomError, describe, one_room, pick_room

    if args.quiet:  # the model loader's own bars too; read when the hub client is first imported
        os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"

    overrides = list(args.overrides)
    if args.rules is not None:
        overrides.append(f"rules={_quoted(str(args.rules))}")
    config = load_config_or_exit(args.config, overrides)
    setup_logging(config.log.level)
    try:
        rooms = [pick_room(config, args.room, str(args.config or "the config"))]
    except RoomError as exc:
        log.error("%s", exc)
        return None
    if every_room and args.room is None:
        rooms = config.rooms
    out = []
    for room in rooms:
        if args.rules is not None:  # --rules replaces the room's own rules too, not only the shared ones
            room = dataclasses.replace(room, rules=config.rules)
        line = describe(config, room, chosen=args.room is not None or len(rooms) > 1)
        if line is not None:
            log.info("%s %s", args.command, line)
        out.append(one_room(config, room))
    return out


def load_rules(config: Any) -> Any:
    """The rules of the config's (only) room, or None after one line per problem."""
    from monitor.rules import load_rules

    try:
        return load_rules(config.rooms[0].rules)
    except ValidationFailed as exc:
        for problem in exc.problems:
            log.error("%s", problem)
        return None


def missing_tuning_extra(command: str) -> bool:
    """True after one line when the plots' packages (matplotlib, tqdm) are not installed: said before
    any model time is spent, not as a traceback after the replay."""
    from importlib.util import find_spec

    missing = [name for name in ("matplotlib", "tqdm") if find_spec(name) is None]
    if missing:
        log.error("%s: its plots and progress bars need %s, which this install lacks: %s", command,
                  " and ".join(missing), TUNING_EXTRA)
    return bool(missing)
