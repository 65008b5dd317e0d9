"""`audio-monitor eval DIR` / `eval --labels [DIR]`: the rules scored on labelled recordings, and the best threshold per rule."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from monitor.audio.formats import AUDIO_FORMATS
from monitor.commands.common import config_args, save_and_show
from monitor.commands.recordings import load_rules, log, missing_tuning_extra, room_args, setup, setup_rooms
from monitor.yamlsource import ValidationFailed

STATE_LABELS = "state_dir/labels"  # what `--labels` without a folder means


def add_parser(sub: Any) -> None:
    p = sub.add_parser("eval", help="score the rules on labelled recordings; sweep thresholds",
                       description="Replay every recording of DIR (DIR/labels.yaml, or DIR/<rule_id>/* and "
                                   f"DIR/negatives/*: {AUDIO_FORMATS}), or of the labelled set the daemon keeps "
                                   "(--labels), then report recall, precision, false alarms per hour and "
                                   "the best threshold per rule.")
    p.add_argument("folder", type=Path, nargs="?", default=None, metavar="DIR", help="the labelled recordings")
    p.add_argument("--labels", nargs="?", const=STATE_LABELS, default=None, metavar="DIR",
                   help="evaluate the clips labelled right, wrong or missed (DIR/<room>/<rule>/{positive,negative}/; "
                        "default: the config's state_dir/labels); with `sources:`, every room's labels with its "
                        "own rules unless --room names one")
    config_args(p)
    room_args(p)
    p.add_argument("--out", type=Path, default=None, help="output folder (default: eval-<DIR name> here)")
    p.add_argument("--max-fa-per-hour", type=rate, default=1.0, metavar="X",
                   help="target false alarms per hour for the best threshold (default: 1)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")


def rate(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of false alarms per hour, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError("must not be negative")
    return value


def run(args: argparse.Namespace) -> int:
    """Exit 0 with report.json, eval.png and a table, or 1 with one line per problem."""
    if (args.folder is None) == (args.labels is None):
        log.error("eval: name a folder of labelled recordings (eval DIR) or the labelled set (eval --labels [DIR]), "
                  "one of the two")
        return 1
    if args.labels is not None:
        return _run_labels(args)
    config = setup(args)
    if config is None or missing_tuning_extra("eval"):
        return 1
    ruleset = load_rules(config)
    if ruleset is None:
        return 1
    from monitor.tuning.labels import load_dataset

    try:
        dataset = load_dataset(args.folder, ruleset)
    except ValidationFailed as exc:
        for problem in exc.problems:
            log.error("%s", problem)
        return 1
    report = _evaluate(config, ruleset, dataset, args)
    if report is None:
        return 1
    out_dir: Path = args.out or Path.cwd() / f"eval-{args.folder.resolve().name}"
    return 0 if _write(report, out_dir) else 1


def _run_labels(args: argparse.Namespace) -> int:
    """Each room's labelled set with that room's rules; a report per room (in a folder each when several)."""
    configs = setup_rooms(args)
    if configs is None or missing_tuning_extra("eval"):
        return 1
    from monitor.tuning.labels import load_label_set
    from monitor.tuning.replay import SharedEngine

    folder = configs[0].state_dir / "labels" if args.labels == STATE_LABELS else Path(args.labels)
    if not folder.is_dir():
        log.error("eval --labels: %s: no labelled set there yet; label alerts as right or wrong first, or name the "
                  "folder that holds <room>/<rule>/{positive,negative}/", folder)
        return 1
    out_dir: Path = args.out or Path.cwd() / "eval-labels"
    shared = SharedEngine()  # one model for every room's replays
    done = 0
    try:
        for config in configs:
            room = config.rooms[0]
            ruleset = load_rules(config)
            if ruleset is None:
                return 1
            try:
                dataset = load_label_set(folder, room.id, ruleset)
            except ValidationFailed as exc:
                for problem in exc.problems:
                    (log.info if len(configs) > 1 else log.error)("%s", problem)
                continue
            report = _evaluate(config, ruleset, dataset, args, shared)
            if report is None:
                return 1
            if len(configs) > 1:
                print(f"room {room.id} ({room.name}):")
            if not _write(report, out_dir / room.id if len(configs) > 1 else out_dir):
                return 1
            done += 1
    finally:
        shared.close()
    if not done and len(configs) > 1:
        log.error("eval --labels: %s holds no labelled clips of any room's rules", folder)
    return 0 if done else 1


def _evaluate(config: Any, ruleset: Any, dataset: Any, args: argparse.Namespace, engine: Any = None) -> Any:
    """The report, or None after one line."""
    from monitor.tuning.eval import evaluate
    from monitor.tuning.replay import ReplayError

    try:
        return evaluate(config, ruleset, dataset, max_fa_per_hour=args.max_fa_per_hour, progress=not args.quiet,
                        engine_factory=engine)
    except ReplayError as exc:
        if not exc.logged:
            log.error("%s", exc)
        return None


def _write(report: dict[str, Any], out_dir: Path) -> bool:
    from monitor.tuning.eval import format_table
    from monitor.tuning.plots import plot_eval

    return save_and_show(report, out_dir, "eval", plot_eval, format_table(report))
