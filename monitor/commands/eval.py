"""`audio-monitor eval DIR`: the rules scored on labelled recordings, and the best threshold per rule."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from monitor.audio.formats import AUDIO_FORMATS
from monitor.commands.common import config_args
from monitor.commands.recordings import load_rules, log, missing_tuning_extra, room_args, setup
from monitor.yamlsource import ValidationFailed


def add_parser(sub: Any) -> None:
    p = sub.add_parser("eval", help="score the rules on labelled recordings; sweep thresholds",
                       description="Replay every recording of DIR (DIR/labels.yaml, or DIR/<rule_id>/* and "
                                   f"DIR/negatives/*: {AUDIO_FORMATS}), then report recall, precision, false alarms per hour and "
                                   "the best threshold per rule.")
    p.add_argument("folder", type=Path, metavar="DIR", help="the labelled recordings")
    config_args(p)
    room_args(p)
    p.add_argument("--out", type=Path, default=None, help="output folder (default: eval-<DIR name> here)")
    p.add_argument("--max-fa-per-hour", type=_rate, default=1.0, metavar="X",
                   help="target false alarms per hour for the best threshold (default: 1)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")


def _rate(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of false alarms per hour, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError("must not be negative")
    return value


def run(args: argparse.Namespace) -> int:
    """Exit 0 with report.json, eval.png and a table, or 1 with one line per problem."""
    config = setup(args)
    if config is None or missing_tuning_extra("eval"):
        return 1
    ruleset = load_rules(config)
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
