"""The `replay` and `eval` subcommands: argument wiring, one-line errors, exit codes.

Kept apart from `monitor.cli` so that `check` and `devices` never import the pipeline.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import shutil
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from monitor.audio.formats import AUDIO_FORMATS
from monitor.yamlsource import ValidationFailed

ConfigArgs = Callable[[argparse.ArgumentParser], None]

log = logging.getLogger(__name__)


def add_replay_parser(sub: Any, config_args: ConfigArgs) -> None:
    p = sub.add_parser("replay", help="run a recording through the rules; write scores, events and a timeline",
                       description="Run FILE through exactly the daemon's path, as fast as the model answers, and "
                                   "write scores.jsonl, events.jsonl and timeline.png.")
    p.add_argument("file", type=Path, metavar="FILE", help=f"a recording: {AUDIO_FORMATS} (any rate, any channels)")
    config_args(p)
    p.add_argument("--rules", type=Path, default=None, help="a rule file or folder instead of the room's rules")
    _room_arg(p)
    p.add_argument("--out", type=Path, default=None, help="output folder (default: replay-<file stem> here)")
    p.add_argument("--start", type=_start_time, default=None, metavar="TIME",
                   help="wall-clock time of the file's first sample, ISO-8601 (e.g. 2026-11-30T22:15:00, local time "
                        "unless it names a zone); schedules are decided on it. Default: the file's modification time")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    p.add_argument("--serve", action="store_true",
                   help="then open the live page on the replay (web.host and web.port of the config) until Ctrl-C")


def _room_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--room", default=None, metavar="ID",
                   help="with a `sources:` config: the room whose rules and audio settings apply (default: the first)")


def _start_time(text: str) -> float:
    """ISO-8601 date and time -> epoch seconds; a time without a zone is local time."""
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an ISO-8601 time such as 2026-11-30T22:15:00, got {text!r}") from None
    return moment.timestamp()  # naive: local time, as a schedule means it


def _rate(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of false alarms per hour, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError("must not be negative")
    return value


def add_eval_parser(sub: Any, config_args: ConfigArgs) -> None:
    p = sub.add_parser("eval", help="score the rules on labelled recordings; sweep thresholds",
                       description="Replay every recording of DIR (DIR/labels.yaml, or DIR/<rule_id>/* and "
                                   f"DIR/negatives/*: {AUDIO_FORMATS}), then report recall, precision, false alarms per hour and "
                                   "the best threshold per rule.")
    p.add_argument("folder", type=Path, metavar="DIR", help="the labelled recordings")
    config_args(p)
    p.add_argument("--rules", type=Path, default=None, help="a rule file or folder instead of the room's rules")
    _room_arg(p)
    p.add_argument("--out", type=Path, default=None, help="output folder (default: eval-<DIR name> here)")
    p.add_argument("--max-fa-per-hour", type=_rate, default=1.0, metavar="X",
                   help="target false alarms per hour for the best threshold (default: 1)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")


def _quoted(text: str) -> str:
    """A YAML single-quoted scalar: `--set` values are YAML, and paths may hold `: ` or `#`."""
    return "'" + text.replace("'", "''") + "'"


def _setup(args: argparse.Namespace) -> Any:
    """The config narrowed to the room that applies (`--room`, default the first), or None after one line."""
    from monitor.cli import load_config_or_exit
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
        room = pick_room(config, args.room, str(args.config or "the config"))
    except RoomError as exc:
        log.error("%s", exc)
        return None
    if args.rules is not None:  # --rules replaces the room's own rules too, not only the shared ones
        room = dataclasses.replace(room, rules=config.rules)
    line = describe(config, room, chosen=args.room is not None)
    if line is not None:
        log.info("%s %s", args.command, line)
    return one_room(config, room)


def _load_rules(config: Any) -> Any:
    """The rules of the config's (only) room, or None after one line per problem."""
    from monitor.rules import load_rules

    try:
        return load_rules(config.rooms[0].rules)
    except ValidationFailed as exc:
        for problem in exc.problems:
            log.error("%s", problem)
        return None


def cmd_replay(args: argparse.Namespace) -> int:
    """`audio-monitor replay FILE`: exit 0 with the three outputs, or 1 with one line per problem."""
    from monitor.tuning.rooms import with_recording

    config = _setup(args)
    if config is None:
        return 1
    room = config.rooms[0]
    config = with_recording(config, Path(os.path.abspath(args.file)))
    ruleset = _load_rules(config)
    if ruleset is None:
        return 1
    from monitor.scorelog import ScoreLog
    from monitor.tuning.replay import ReplayError, replay_file, summary_line, write_replay

    out_dir: Path = args.out or Path.cwd() / f"replay-{args.file.stem}"
    created = not out_dir.exists()
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        log.error("--out: cannot create %s (%s); choose another folder", out_dir, exc.strerror)
        return 1
    scorelog = ScoreLog(out_dir / "scores.jsonl", mode="w")
    try:
        run = replay_file(config, ruleset, scorelog=scorelog, progress=not args.quiet, start_time=args.start)
    except ReplayError as exc:
        if not exc.logged:
            log.error("%s", exc)
        scorelog.close()
        if created and not any(out_dir.iterdir()):
            shutil.rmtree(out_dir, ignore_errors=True)
        return 1
    scorelog.close()
    try:
        write_replay(run, out_dir, ruleset, room.id)  # the node its events name, as the daemon publishes them
    except OSError as exc:
        log.error("--out: cannot write into %s (%s)", out_dir, exc.strerror or exc)
        return 1
    print(summary_line(run, out_dir), flush=True)
    if args.serve:
        from monitor.web.replayview import serve_replay

        return serve_replay(out_dir, ruleset, config, args.file, run.duration)
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    """`audio-monitor eval DIR`: exit 0 with report.json, eval.png and a table, or 1 with one line per problem."""
    config = _setup(args)
    if config is None:
        return 1
    ruleset = _load_rules(config)
    if ruleset is None:
        return 1
    from monitor.tuning.eval import evaluate, format_table, write_report
    from monitor.tuning.labels import load_dataset
    from monitor.tuning.replay import ReplayError

    try:
        dataset = load_dataset(args.folder, ruleset)
    except ValidationFailed as exc:
        for problem in exc.problems:
            log.error("%s", problem)
        return 1
    try:
        report = evaluate(config, ruleset, dataset, max_fa_per_hour=args.max_fa_per_hour, progress=not args.quiet)
    except ReplayError as exc:
        if not exc.logged:
            log.error("%s", exc)
        return 1
    out_dir: Path = args.out or Path.cwd() / f"eval-{args.folder.resolve().name}"
    try:
        paths = write_report(report, out_dir)
    except OSError as exc:
        log.error("--out: cannot write into %s (%s)", out_dir, exc.strerror or exc)
        return 1
    print(format_table(report))
    print(f"report: {paths['report']}  plot: {paths['plot']}")
    return 0
