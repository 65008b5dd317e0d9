"""`audio-monitor eval`: how well the rules do on labelled recordings, and at which threshold.

Each recording is replayed once through the daemon's pipeline (the model answers every window
once); the answers are kept in memory. The pure rule engine is then run again over those
answers for the configured rules and for every threshold of a sweep — no model calls — and the
events are counted against the labels (definitions in `monitor.tuning.metrics`).

Sweeps are for yes_no rules: each step copies the rule with `threshold` set to the step and
`release` moved with it, keeping the rule's hysteresis gap (threshold - release), floored at 0.
Patience, hold, cooldown and gates stay as written. Match rules are scored at their configured
settings only. Schedules are ignored here (every rule is asked on every window): an evaluation
measures detection, not the hours a rule is meant to be active.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from monitor.config import Config
from monitor.engine.api import Result
from monitor.events import Event
from monitor.rules import RuleEngine, RuleSet, YesNoRule
from monitor.tuning.labels import SCORED_KINDS, Dataset, Recording
from monitor.tuning.metrics import Tally, best_threshold, rule_spans
from monitor.tuning.reports import text_table
from monitor.tuning.replay import SharedEngine, replay_file
from monitor.tuning.rooms import with_recording
from monitor.tuning.run import ReplayRun
from monitor.windows import Window

log = logging.getLogger(__name__)

STEP = 0.05
THRESHOLDS = tuple(round(i * STEP, 2) for i in range(int(round(1 / STEP)) + 1))


def without_schedules(ruleset: RuleSet) -> RuleSet:
    """The same rules, active at every hour (see the module docstring)."""
    rules = [r.model_copy(update={"schedule": None}) if r.schedule is not None else r for r in ruleset.rules]
    if any(r.schedule is not None for r in ruleset.rules):
        log.info("eval ignores rule schedules: every rule is asked on every window")
    return RuleSet(rules=rules, files=ruleset.files, path=ruleset.path, origins=ruleset.origins)


def at_threshold(ruleset: RuleSet, threshold: float) -> RuleSet:
    """Every yes_no rule moved to `threshold`, its release keeping the rule's hysteresis gap."""
    rules = []
    for rule in ruleset.rules:
        if isinstance(rule, YesNoRule):
            rule = rule.model_copy(update={"threshold": threshold, "release": release_at(rule, threshold)})
        rules.append(rule)
    return RuleSet(rules=rules, files=ruleset.files, path=ruleset.path, origins=ruleset.origins)


def release_at(rule: YesNoRule, threshold: float) -> float:
    """The release that keeps the rule's hysteresis gap (threshold - release) at another threshold."""
    return round(max(0.0, threshold - (rule.threshold - rule.release)), 6)


def decide(results: Sequence[Result], ruleset: RuleSet) -> list[tuple[Event, Window]]:
    """Run a fresh rule engine over recorded answers: the events, each with the window that decided it."""
    engine = RuleEngine(ruleset)
    out: list[tuple[Event, Window]] = []
    for result in results:
        out.extend((event, result.window) for event in engine.update(result.window, result))
    return out


def _tally(tally: Tally, events: Sequence[tuple[Event, Window]], rule_id: str, rec: Recording, tol: float) -> None:
    tally.add_recording(rule_spans(events, rule_id), rec.intervals.get(rule_id, ()), rec.duration, tol, str(rec.path))


def scored_rules(ruleset: RuleSet) -> list[Any]:
    return [r for r in ruleset.rules if r.enabled and r.kind in SCORED_KINDS]


def evaluate(config: Config, ruleset: RuleSet, dataset: Dataset, *, max_fa_per_hour: float = 1.0,
             engine_factory: Callable[..., Any] | None = None, progress: bool = False) -> dict[str, Any]:
    """Replay every recording, sweep thresholds, count; the report (as written to report.json).

    Each recording is heard as the config's first room (`monitor.tuning.rooms.one_room` picks
    another). Raises ReplayError (monitor.tuning.replay) when a recording or the model cannot be read.
    """
    rules = without_schedules(ruleset)
    shared = SharedEngine(engine_factory)
    runs: list[tuple[Recording, ReplayRun]] = []
    started = time.perf_counter()
    bar = _progress(dataset, progress)
    try:
        for rec in dataset.recordings:
            if bar is not None:
                bar.set_postfix_str(rec.path.name)
            runs.append((rec, replay_file(with_recording(config, rec.path), rules, engine_factory=shared)))
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    shared.close()  # every pipeline has stopped: no engine thread holds the backend any more
    replay_s = time.perf_counter() - started
    return build_report(config, rules, dataset, runs, max_fa_per_hour, replay_s)


def _progress(dataset: Dataset, enabled: bool) -> Any:
    if not enabled or not sys.stderr.isatty():
        return None
    from tqdm import tqdm

    return tqdm(total=len(dataset.recordings), unit="rec", desc="replaying", file=sys.stderr, leave=False,
                dynamic_ncols=True)


def build_report(config: Config, rules: RuleSet, dataset: Dataset, runs: Sequence[tuple[Recording, ReplayRun]],
                 max_fa_per_hour: float, replay_s: float = 0.0) -> dict[str, Any]:
    """Count the recorded answers against the labels at the configured rules and over the sweep."""
    tol = config.windows.length
    scored = scored_rules(rules)
    current = {r.id: Tally() for r in scored}
    sweep = {r.id: {t: Tally() for t in THRESHOLDS} for r in scored if isinstance(r, YesNoRule)}
    swept = {t: at_threshold(rules, t) for t in THRESHOLDS} if sweep else {}
    for rec, run in runs:
        mine = [r for r in scored if rec.scores(r.id)]
        if not mine:
            continue
        events = decide(run.results, rules)
        for rule in mine:
            _tally(current[rule.id], events, rule.id, rec, tol)
        for t, ruleset_t in swept.items():
            events_t = decide(run.results, ruleset_t)
            for rule in mine:
                if rule.id in sweep:
                    _tally(sweep[rule.id][t], events_t, rule.id, rec, tol)
    report_rules: dict[str, Any] = {}
    for rule in scored:
        entry: dict[str, Any] = {"kind": rule.kind, "current": current[rule.id].metrics(details=True)}
        if isinstance(rule, YesNoRule):
            points = [{"threshold": t, "release": release_at(rule, t),
                       **tally.metrics()} for t, tally in sweep[rule.id].items()]
            best = best_threshold(points, max_fa_per_hour)
            entry.update({"use": rule.use, "threshold": rule.threshold, "release": rule.release,
                          "patience": rule.patience, "hold": rule.hold, "cooldown": rule.cooldown,
                          "sweep": points, "best": best})
            if best is None:
                entry["best_note"] = _why_no_best(points, max_fa_per_hour)
        else:
            entry.update({"source": rule.source, "match": rule.match, "sweep": None, "best": None})
        report_rules[rule.id] = entry
    negative = sum(r.duration for r in dataset.recordings if r.role == "negative")
    return {
        "folder": str(dataset.folder),
        "layout": dataset.layout,
        "rules_path": str(rules.path) if rules.path is not None else None,
        "model": model_name(config),
        "windows": {"length": config.windows.length, "hop": config.windows.hop},
        "tolerance_s": tol,
        "max_fa_per_hour": max_fa_per_hour,
        "thresholds": list(THRESHOLDS),
        "audio": {"recordings": len(dataset.recordings), "seconds": round(dataset.seconds, 3),
                  "negative_recordings_seconds": round(negative, 3), "replay_wall_s": round(replay_s, 3)},
        "recordings": [{"file": str(rec.path), "role": rec.role, "duration": round(rec.duration, 3),
                        "windows": run.windows, "failed": run.failed,
                        "labels": {k: [list(iv) for iv in v] for k, v in rec.intervals.items()},
                        "scored_rules": sorted(rec.scope) if rec.scope is not None else None}
                       for rec, run in runs],
        "rules": report_rules,
    }


def model_name(config: Config) -> str:
    """The model the answers came from: a served one by name and (redacted) address."""
    model = config.model
    if model.backend == "openai":
        from monitor.audio.redact import redact_url

        return f"{model.name} served at {redact_url(str(model.url))}"
    return model.label


def _why_no_best(points: Sequence[dict[str, Any]], target: float) -> str:
    if all(p["recall"] is None for p in points):
        return "no labelled intervals for this rule: add positives to choose a threshold"
    if all(p["fa_per_hour"] is None for p in points):
        return "no negative audio for this rule: add negatives to measure false alarms"
    return f"no threshold keeps false alarms at or below {target:g} per hour"


# ---------------------------------------------------------------------------- terminal


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _count(num: int, den: int, ratio: float | None) -> str:
    return "-" if ratio is None else f"{num}/{den} {ratio:.2f}"


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def format_table(report: dict[str, Any]) -> str:
    """The report as a table a person reads in a terminal."""
    target = report["max_fa_per_hour"]
    head = ["rule", "kind", "thr", "recall", "precision", "FA", "FA/h", "latency", f"best thr @FA/h<={target:g}",
            "recall", "FA/h"]
    rows = [head]
    for rule_id, entry in report["rules"].items():
        c = entry["current"]
        best = entry.get("best")
        rows.append([
            rule_id, entry["kind"], f"{entry['threshold']:.2f}" if "threshold" in entry else "-",
            _count(c["detected"], c["intervals"], c["recall"]), _count(c["true_on"], c["on_events"], c["precision"]),
            str(c["false_alarms"]), _rate(c["fa_per_hour"]),
            "-" if c["mean_latency_s"] is None else f"{c['mean_latency_s']:.1f}s",
            f"{best['threshold']:.2f}" if best else ("n/a" if entry["sweep"] is None else "none"),
            _pct(best["recall"]) if best else "-", _rate(best["fa_per_hour"]) if best else "-",
        ])
    lines = text_table(rows)
    audio = report["audio"]
    lines.append("")
    lines.append(f"{audio['recordings']} recording(s), {audio['seconds'] / 60:.1f} min of audio "
                 f"({audio['negative_recordings_seconds'] / 60:.1f} min in negatives), replayed in "
                 f"{audio['replay_wall_s']:.1f}s; tolerance {report['tolerance_s']:g}s after each interval")
    for rule_id, entry in report["rules"].items():
        if entry.get("best_note"):
            lines.append(f"{rule_id}: {entry['best_note']}")
    return "\n".join(lines)
