"""Pictures for tuning: a replay's timeline and an evaluation's curves (matplotlib, no display needed).

Figures are made with `matplotlib.figure.Figure` directly, never through pyplot, so nothing
depends on a GUI backend or on global pyplot state.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from monitor.rules import MatchRule, RuleSet, TextRule, YesNoRule
from monitor.tuning.metrics import rule_spans

if TYPE_CHECKING:
    from monitor.tuning.run import ReplayRun

log = logging.getLogger(__name__)

MAX_LABELS = 60  # transcripts written out on a timeline; further ones are only marked
LANE_HEIGHT = 1.7  # inches


def _figure(width: float, height: float) -> Any:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def _on_spans(run: ReplayRun, rule_id: str) -> list[tuple[float, float]]:
    return [(on, run.duration if off is None else off) for on, off in rule_spans(run.events, rule_id)]


def plot_timeline(run: ReplayRun, ruleset: RuleSet, path: Path) -> Path:
    """A lane per rule and a level lane, against seconds from the start of the file.

    Each point sits at the end of its window, where the daemon decides: yes_no lanes show the
    score (or lift, for `use: lift` rules) with the threshold and release lines and the ON spans
    shaded; text lanes mark each transcript and the match events derived from it.
    """
    rules = [r for r in ruleset.rules if r.enabled and not isinstance(r, MatchRule)]
    matches = [r for r in ruleset.rules if r.enabled and isinstance(r, MatchRule)]
    fig = _figure(14, LANE_HEIGHT * (len(rules) + 1) + 0.6)
    axes = fig.subplots(len(rules) + 1, 1, sharex=True, squeeze=False)[:, 0]
    ends = [r.window.end / r.window.sample_rate for r in run.results]
    for ax, rule in zip(axes, rules):
        if isinstance(rule, YesNoRule):
            _yes_no_lane(ax, run, rule, ends)
        elif isinstance(rule, TextRule):
            _text_lane(ax, run, rule, [m for m in matches if m.source == rule.id])
    level = axes[-1]
    level.plot(ends, [r.window.dbfs for r in run.results], color="0.3", lw=1)
    level.set_ylabel("level\ndBFS")
    level.set_ylim(max(-120.0, min([r.window.dbfs for r in run.results], default=-120.0) - 5), 0)
    for rule in rules:
        if isinstance(rule, YesNoRule) and rule.gate.min_dbfs is not None:
            level.axhline(rule.gate.min_dbfs, ls=":", lw=0.8, color="tab:purple")
            level.text(0, rule.gate.min_dbfs, f" gate {rule.id}", fontsize=7, va="bottom", color="tab:purple")
    level.set_xlabel("seconds from the start of the file (end of each window)")
    level.set_xlim(0, max(run.duration, max(ends, default=0.0)))
    fig.suptitle(f"{run.path.name}: {run.windows} windows, {len(run.events)} events")
    fig.savefig(path, dpi=100)
    return path


def _yes_no_lane(ax: Any, run: ReplayRun, rule: YesNoRule, ends: list[float]) -> None:
    values = []
    for result in run.results:
        score = result.scores.get(rule.id)
        values.append(math.nan if score is None else (score.lift if rule.use == "lift" else score.score))
    for start, end in _on_spans(run, rule.id):
        ax.axvspan(start, end, color="tab:red", alpha=0.18, lw=0)
    ax.plot(ends, values, marker=".", ms=3, lw=1, color="tab:blue")
    ax.axhline(rule.threshold, color="tab:red", ls="--", lw=1, label=f"threshold {rule.threshold:g}")
    ax.axhline(rule.release, color="tab:orange", ls=":", lw=1, label=f"release {rule.release:g}")
    if rule.use == "lift":
        finite = [v for v in values if not math.isnan(v)]
        low = min([-0.1, *finite])
        ax.set_ylim(low - 0.05, max([rule.threshold, *finite]) + 0.05)
    else:
        ax.set_ylim(-0.02, 1.02)
    ax.set_ylabel(f"{rule.id}\n{rule.use}")
    ax.legend(loc="upper right", fontsize=7)


def _text_lane(ax: Any, run: ReplayRun, rule: TextRule, matches: list[MatchRule]) -> None:
    ax.set_ylim(0, 1)
    ax.set_yticks([])
    ax.set_ylabel(f"{rule.id}\ntext")
    match_ids = {m.id for m in matches}
    shown = 0
    for event, _window in run.events:
        if event.rule_id == rule.id and event.kind == "text":
            start, end = run.offset(event.window_start), run.offset(event.window_end)
            ax.axvspan(start, end, color="tab:green", alpha=0.2, lw=0)
            if shown < MAX_LABELS and event.text:
                text = event.text if len(event.text) <= 40 else event.text[:39] + "…"
                ax.text(start, 0.05 + 0.3 * (shown % 3), text, fontsize=7, clip_on=True)
                shown += 1
        elif event.rule_id in match_ids and event.kind == "match":
            at = run.offset(event.window_end)
            ax.axvline(at, color="tab:red", lw=1.2)
            ax.text(at, 0.95, f" {event.rule_id}", fontsize=7, color="tab:red", va="top", clip_on=True)


def plot_eval(report: dict[str, Any], path: Path) -> Path:
    """Recall against false alarms per hour, and recall/precision against the threshold, a curve per rule."""
    fig = _figure(13, 5)
    roc, thr = fig.subplots(1, 2)
    target = report["max_fa_per_hour"]
    colors = iter(["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown", "tab:pink",
                   "tab:olive", "tab:cyan", "tab:gray"] * 10)
    for rule_id, entry in report["rules"].items():
        color = next(colors)
        current = entry["current"]
        if entry["sweep"]:
            points = [p for p in entry["sweep"] if p["recall"] is not None and p["fa_per_hour"] is not None]
            points.sort(key=lambda p: (p["fa_per_hour"], p["recall"]))
            if points:
                roc.plot([p["fa_per_hour"] for p in points], [p["recall"] for p in points], marker=".",
                         color=color, label=rule_id)
            ts = [p["threshold"] for p in entry["sweep"]]
            thr.plot(ts, [math.nan if p["recall"] is None else p["recall"] for p in entry["sweep"]],
                     color=color, label=f"{rule_id} recall")
            thr.plot(ts, [math.nan if p["precision"] is None else p["precision"] for p in entry["sweep"]],
                     color=color, ls="--", label=f"{rule_id} precision")
            thr.axvline(entry["threshold"], color=color, ls=":", lw=0.8)
            best = entry.get("best")
            if best is not None:
                roc.plot([best["fa_per_hour"]], [best["recall"]], marker="*", ms=12, color=color, ls="none")
        if current["recall"] is not None and current["fa_per_hour"] is not None:
            roc.plot([current["fa_per_hour"]], [current["recall"]], marker="o", mfc="none", ms=9, color=color,
                     ls="none", label=None if entry["sweep"] else f"{rule_id} (match)")
    roc.axvline(target, color="0.4", ls="--", lw=1)
    roc.text(target, 0.02, f" target {target:g}/h", fontsize=8, color="0.3")
    roc.set_xscale("symlog", linthresh=1.0)
    rates = [p["fa_per_hour"] for e in report["rules"].values() for p in (e["sweep"] or [e["current"]])
             if p["fa_per_hour"] is not None]
    roc.set_xlim(0, max([target, *rates]) * 1.5 + 1)
    roc.set_ylim(-0.02, 1.02)
    roc.set_xlabel("false alarms per hour (o = configured threshold, * = best for the target)")
    roc.set_ylabel("recall")
    roc.set_title("recall vs false alarms")
    thr.set_xlim(0, 1)
    thr.set_ylim(-0.02, 1.02)
    thr.set_xlabel("threshold (dotted: configured)")
    thr.set_title("recall (solid) and precision (dashed)")
    for ax in (roc, thr):
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, loc="best")
    fig.suptitle(f"{report['folder']}: {report['audio']['recordings']} recording(s)")
    fig.savefig(path, dpi=100)
    return path


def plot_compare(report: dict[str, Any], path: Path) -> Path:
    """Per phrasing, a lane with each clip's value: positives above the line, negatives below, the threshold across."""
    phrasings = report["phrasings"]
    fig = _figure(12, 1.3 * len(phrasings) + 1.0)
    axes = fig.subplots(len(phrasings), 1, sharex=True, squeeze=False)[:, 0]
    values = [v for p in phrasings for side in p["scores"].values() for v in side]
    low, high = min([0.0, *values]), max([1.0, *values])
    for ax, p in zip(axes, phrasings):
        for side, y, color, marker in (("positive", 0.65, "tab:green", "o"), ("negative", 0.35, "tab:red", "x")):
            xs = p["scores"][side]
            jitter = [y + 0.18 * (((i * 0.618) % 1.0) - 0.5) for i in range(len(xs))]  # spread, deterministic
            ax.scatter(xs, jitter, s=22, color=color, marker=marker, label=f"{side} ({len(xs)})")
        ax.axvline(p["threshold"], color="0.2", ls="--", lw=1)
        ax.axhline(0.5, color="0.85", lw=0.8)
        ax.set_ylim(0, 1)
        ax.set_yticks([])
        auc = "-" if p["auc"] is None else f"{p['auc']:.2f}"
        ask = p["ask"] if len(p["ask"]) <= 100 else p["ask"][:99] + "…"
        ax.set_title(f"#{p['n']}{' (current)' if p['current'] else ''}  AUC {auc}  recall {p['hits']}/{p['positives']} "
                     f"at threshold {p['threshold']:g}: {ask}", fontsize=8, loc="left")
        ax.grid(axis="x", alpha=0.3)
    axes[0].legend(fontsize=7, loc="upper right")
    axes[-1].set_xlim(low - 0.02, high + 0.02)
    axes[-1].set_xlabel(f"{'lift' if report['use'] == 'lift' else 'score'} (dashed: the phrasing's threshold at "
                        f"<= {report['max_fa_per_hour']:g} false alarms per hour)")
    clips = report["clips"]
    fig.suptitle(f"{report['rule']}: {clips['positive']} positive and {clips['negative']} negative clip(s)")
    fig.savefig(path, dpi=100)
    return path
