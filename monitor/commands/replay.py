"""`audio-monitor replay FILE`: a recording through the daemon's own path; scores, events and a timeline."""

from __future__ import annotations

import argparse
import os
import shutil
from datetime import datetime
from pathlib import Path
from typing import Any

from monitor.audio.formats import AUDIO_FORMATS
from monitor.commands.common import config_args
from monitor.commands.recordings import load_rules, log, missing_tuning_extra, room_args, setup


def add_parser(sub: Any) -> None:
    p = sub.add_parser("replay", help="run a recording through the rules; write scores, events and a timeline",
                       description="Run FILE through exactly the daemon's path, as fast as the model answers, and "
                                   "write scores.jsonl, events.jsonl and timeline.png.")
    p.add_argument("file", type=Path, metavar="FILE", help=f"a recording: {AUDIO_FORMATS} (any rate, any channels)")
    config_args(p)
    room_args(p)
    p.add_argument("--out", type=Path, default=None, help="output folder (default: replay-<file stem> here)")
    p.add_argument("--start", type=_start_time, default=None, metavar="TIME",
                   help="wall-clock time of the file's first sample, ISO-8601 (e.g. 2026-11-30T22:15:00, local time "
                        "unless it names a zone); schedules are decided on it. Default: the file's modification time")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    p.add_argument("--serve", action="store_true",
                   help="then open the live page on the replay (web.host and web.port of the config) until Ctrl-C")


def _start_time(text: str) -> float:
    """ISO-8601 date and time -> epoch seconds; a time without a zone is local time."""
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an ISO-8601 time such as 2026-11-30T22:15:00, got {text!r}") from None
    return moment.timestamp()  # naive: local time, as a schedule means it


def run(args: argparse.Namespace) -> int:
    """Exit 0 with the three outputs, or 1 with one line per problem."""
    from monitor.tuning.rooms import with_recording

    config = setup(args)
    if config is None or missing_tuning_extra("replay"):
        return 1
    room = config.rooms[0]
    config = with_recording(config, Path(os.path.abspath(args.file)))
    ruleset = load_rules(config)
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
        replayed = replay_file(config, ruleset, scorelog=scorelog, progress=not args.quiet, start_time=args.start)
    except ReplayError as exc:
        if not exc.logged:
            log.error("%s", exc)
        scorelog.close()
        if created and not any(out_dir.iterdir()):
            shutil.rmtree(out_dir, ignore_errors=True)
        return 1
    scorelog.close()
    try:
        write_replay(replayed, out_dir, ruleset, room.id)  # the node its events name, as the daemon publishes them
    except OSError as exc:
        log.error("--out: cannot write into %s (%s)", out_dir, exc.strerror or exc)
        return 1
    print(summary_line(replayed, out_dir), flush=True)
    if args.serve:
        from monitor.web.replayview import serve_replay

        return serve_replay(out_dir, ruleset, config, args.file, replayed.duration)
    return 0
