"""`audio-monitor compare RULE --ask "…"`: phrasings of a rule's question side by side on its labelled clips."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from monitor.commands.common import config_args, save_and_show
from monitor.commands.eval import rate
from monitor.commands.recordings import TUNING_EXTRA, load_rules, log, missing_tuning_extra, room_args, setup


def add_parser(sub: Any) -> None:
    p = sub.add_parser("compare", help="compare phrasings of a rule's question on its labelled clips",
                       description="Score the rule's current question and every --ask on each labelled clip of the "
                                   "rule (one request per clip), then report per phrasing: ROC AUC, recall at the "
                                   "false-alarm budget with its 95%% interval, the threshold, and the clips it gets "
                                   "wrong. --apply N writes phrasing N and its threshold into the rule file.")
    p.add_argument("rule", metavar="RULE", help="the id of a yes/no rule")
    p.add_argument("--ask", action="append", default=[], metavar="TEXT",
                   help="another phrasing of the question (repeatable); the current one is always phrasing 1")
    config_args(p)
    room_args(p)
    p.add_argument("--labels", type=Path, default=None, metavar="DIR",
                   help="the labelled set (default: the config's state_dir/labels); its <room>/<RULE>/ clips are used")
    p.add_argument("--out", type=Path, default=None,
                   help="output folder (default: the config's state_dir/compare/ROOM/compare-RULE, where the live page "
                        "shows the latest comparison)")
    p.add_argument("--max-fa-per-hour", type=rate, default=1.0, metavar="X",
                   help="the false-alarm budget each phrasing's threshold must keep (default: 1 per hour of negatives)")
    p.add_argument("--apply", type=int, default=None, metavar="N",
                   help="write phrasing N and its threshold into the rule file (a running daemon reloads it)")
    p.add_argument("--force", action="store_true", help="with --apply: write it even when its advantage is within the noise")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    """Exit 0 with report.json, compare.png and a table (and the rule file changed with --apply), or 1 after one line."""
    config = setup(args)
    if config is None or missing_tuning_extra("compare") or (args.apply is not None and _missing_ruamel()):
        return 1
    ruleset = load_rules(config)
    if ruleset is None:
        return 1
    from monitor.rules import YesNoRule

    rule = ruleset.get(args.rule)
    if not isinstance(rule, YesNoRule):
        what = "no rule" if rule is None else f"a {rule.kind} rule"
        yes_no = ", ".join(r.id for r in ruleset.rules if isinstance(r, YesNoRule)) or "none"
        log.error("compare %s: %s of that id in %s; phrasings are compared for yes/no rules (%s)", args.rule, what,
                  config.rooms[0].rules, yes_no)
        return 1
    report = _compare(args, config, rule)
    if report is None:
        return 1
    if args.apply is None:
        return 0
    return _apply(args, ruleset, rule, report)


def _compare(args: argparse.Namespace, config: Any, rule: Any) -> dict[str, Any] | None:
    from monitor.engine.backends import load_backend
    from monitor.engine.errors import ModelLoadError
    from monitor.labels.store import compare_dir, read_labels
    from monitor.tuning.compare import CompareError, build_report, format_table, phrasings_of, score_clips
    from monitor.tuning.plots import plot_compare
    from monitor.tuning.eval import model_name

    room = config.rooms[0]
    folder = args.labels or config.state_dir / "labels"
    clips = read_labels(folder, room=room.id, rule=rule.id)
    if not clips:
        log.error("compare %s: no labelled clips in %s; label alerts of this rule as right or wrong first",
                  rule.id, folder / room.id / rule.id)
        return None
    for verdict in ("positive", "negative"):
        if not any(c.verdict == verdict for c in clips):
            log.warning("compare %s: no %s clips: AUC and the threshold need both kinds", rule.id, verdict)
    prompts = phrasings_of(rule, args.ask)
    try:
        backend = load_backend(config.model)
    except ModelLoadError as exc:
        log.error("%s", exc)
        return None
    try:
        scored = score_clips(backend, clips, prompts, rule.use, config.windows.length, room.id)
    except CompareError as exc:
        log.error("compare %s: %s", rule.id, exc)
        return None
    finally:
        close = getattr(backend, "close", None)
        if close is not None:
            close()
    report = build_report(rule, scored, prompts, args.max_fa_per_hour, model_name(config))
    out_dir: Path = args.out or compare_dir(config.state_dir, room.id, rule.id)
    if not save_and_show(report, out_dir, "compare", plot_compare, format_table(report)):
        return None
    return report


def _apply(args: argparse.Namespace, ruleset: Any, rule: Any, report: dict[str, Any]) -> int:
    from monitor.tuning.compare import refusal
    from monitor.tuning.rulefile import ApplyError, apply_phrasing

    why = refusal(report, args.apply)
    if why is not None and not (args.force and 1 <= args.apply <= len(report["phrasings"])):
        log.error("%s", why)
        return 1
    chosen = report["phrasings"][args.apply - 1]
    file = Path(ruleset.origins[rule.id][0])
    try:
        diff = apply_phrasing(file, rule.id, chosen["ask"], chosen["threshold"])
    except ApplyError as exc:
        log.error("--apply %d: %s: %s; write by hand: ask: %s / threshold: %g", args.apply, file, exc, chosen["ask"],
                  chosen["threshold"])
        return 1
    print("\n".join(diff))
    print(f"applied phrasing {args.apply} to {rule.id} in {file}{' (--force)' if why else ''}; "
          "a running daemon reloads it by itself")
    return 0


def _missing_ruamel() -> bool:
    from importlib.util import find_spec

    if find_spec("ruamel") is None or find_spec("ruamel.yaml") is None:
        log.error("compare --apply: editing a rule file keeping its comments needs ruamel.yaml, which this install "
                  "lacks: %s", TUNING_EXTRA)
        return True
    return False
