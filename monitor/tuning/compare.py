"""`audio-monitor compare`: several phrasings of one rule's question, scored on its labelled clips.

Each labelled clip (`monitor.labels.store`) is heard once: the window the model heard when it
decided (the sidecar's `window`; the whole clip, up to the model's 30 s, when it has none) goes
to the backend as ONE request carrying every phrasing as a question. The local engine answers
that in one packed forward — the audio's prefix once, every question after it in the same row —
so ten phrasings cost little more than one. A served model (`model.backend: openai`) gets the
same request as one chat completion per phrasing, all in flight together, and its prefix cache
shares the audio among them.

Each phrasing's value on a clip is what the rule compares with its threshold: the score, or the
lift over the question's score on silence for `use: lift` (baselines are taken as the daemon
takes them, on silence of one window's length). Gates, patience and hold are not applied: this
compares questions, `eval --labels` measures the whole rule. The numbers (`monitor.tuning.ranking`)
come with their counts and intervals, because a home's labelled set is small.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from monitor.engine.api import Question, Request
from monitor.labels.store import LabelClip, load_audio
from monitor.rules import YesNoRule
from monitor.tuning.ranking import at_budget, paired_auc_gain, roc_auc, wilson
from monitor.tuning.reports import text_table
from monitor.windows import Window

log = logging.getLogger(__name__)

MAX_SECONDS = 30.0  # what the models hear at most


class CompareError(RuntimeError):
    """A comparison that cannot run; str() is the one line the user sees."""


@dataclass
class Scored:
    """Every phrasing's value on every clip, in clip order; and what it cost."""

    clips: list[LabelClip]
    values: list[list[float]]  # [clip][phrasing]
    requests: int = 0  # backend calls made for the clips (one per clip)
    wall_s: float = 0.0


def phrasings_of(rule: YesNoRule, asks: Sequence[str]) -> list[str]:
    """The rule's current question first, then each other phrasing once."""
    return list(dict.fromkeys([rule.ask, *(a.strip() for a in asks if a.strip())]))


def clip_window(clip: LabelClip, sample_rate: int = 16_000) -> Window:
    """The audio a clip's label is about, as a window the backend answers."""
    span = clip.window or (0.0, min(clip.duration, MAX_SECONDS))
    audio = load_audio(clip, *span)
    return Window(seq=0, start=0, end=len(audio), sample_rate=sample_rate, t_start=0.0,
                  t_end=len(audio) / sample_rate, audio=audio, dbfs=0.0, speech_ratio=0.0,
                  speech=np.zeros(0, dtype=bool))


def score_clips(backend: Any, clips: Sequence[LabelClip], prompts: Sequence[str], use: str,
                window_seconds: float, room: str = "") -> Scored:
    """Ask every prompt about every clip: one backend request per clip; raise CompareError on a failure."""
    backend.calibrate(list(prompts), window_seconds)  # baselines as the daemon takes them (for `use: lift`)
    questions = tuple(Question(f"p{i}", p) for i, p in enumerate(prompts))
    scored = Scored([], [])
    started = time.perf_counter()
    for clip in clips:
        request = Request(clip_window(clip), questions, source=room, live=False)
        result = backend.answer([request])[0]
        scored.requests += 1
        if result.error is not None:
            raise CompareError(f"{clip.path}: the model failed on it ({result.error})")
        missing = [q.prompt for q in questions if q.key not in result.scores]
        if missing:  # a served model in top-K mode that heard neither yes nor no
            log.warning("%s: left out, the model answered neither yes nor no to %r", clip.name, missing[0])
            continue
        scores = [result.scores[q.key] for q in questions]
        scored.clips.append(clip)
        scored.values.append([s.lift if use == "lift" else s.score for s in scores])
    scored.wall_s = time.perf_counter() - started
    return scored


def build_report(rule: YesNoRule, scored: Scored, prompts: Sequence[str], max_fa_per_hour: float,
                 model: str = "") -> dict[str, Any]:
    """The comparison as written to report.json (the table and the plot read it)."""
    pos_idx = [i for i, c in enumerate(scored.clips) if c.verdict == "positive"]
    neg_idx = [i for i, c in enumerate(scored.clips) if c.verdict == "negative"]
    negative_s = sum(scored.clips[i].duration for i in neg_idx)
    columns = [[row[k] for row in scored.values] for k in range(len(prompts))]
    current_pos = [columns[0][i] for i in pos_idx]
    current_neg = [columns[0][i] for i in neg_idx]
    phrasings = []
    for k, ask in enumerate(prompts):
        pos, neg = [columns[k][i] for i in pos_idx], [columns[k][i] for i in neg_idx]
        op = at_budget(pos, neg, negative_s / 3600.0, max_fa_per_hour)
        ci = wilson(op.hits, op.positives)
        wrong = [{"clip": scored.clips[i].name, "verdict": scored.clips[i].verdict, "score": round(columns[k][i], 6)}
                 for i in (*pos_idx, *neg_idx)
                 if (columns[k][i] >= op.threshold) != (scored.clips[i].verdict == "positive")]
        gain = None if k == 0 else paired_auc_gain(current_pos, current_neg, pos, neg)
        phrasings.append({
            "n": k + 1,
            "ask": ask,
            "current": k == 0,
            "auc": _r(roc_auc(pos, neg)),
            "recall_at_budget": _r(op.recall),
            "recall_ci": None if ci is None else [_r(ci[0]), _r(ci[1])],
            "hits": op.hits,
            "positives": op.positives,
            "threshold": op.threshold,
            "false_alarms": op.false_alarms,
            "negatives": op.negatives,
            "fa_per_hour": _r(op.fa_per_hour),
            "allowed_false_alarms": op.allowed,
            "wrong": wrong,
            "vs_current": None if gain is None else {"auc_diff": _r(gain.diff), "low": _r(gain.low),
                                                     "high": _r(gain.high), "clear": gain.clear},
            "scores": {"positive": [round(v, 6) for v in pos], "negative": [round(v, 6) for v in neg]},
        })
    return {
        "rule": rule.id,
        "use": rule.use,
        "rule_threshold": rule.threshold,
        "model": model,
        "max_fa_per_hour": max_fa_per_hour,
        "clips": {"positive": len(pos_idx), "negative": len(neg_idx), "negative_seconds": round(negative_s, 3)},
        "backend_requests": scored.requests,
        "seconds_per_clip": round(scored.wall_s / scored.requests, 4) if scored.requests else None,
        "phrasings": phrasings,
    }


def _r(value: float | None) -> float | None:
    return None if value is None else round(float(value), 6)


# ---------------------------------------------------------------------------- terminal and files


def _cell(value: float | None, fmt: str = ".2f") -> str:
    return "-" if value is None else format(value, fmt)


def format_table(report: dict[str, Any], width: int = 60) -> str:
    """The comparison as a person reads it: counts beside every rate."""
    budget = report["max_fa_per_hour"]
    head = ["#", "ask", "AUC", f"recall @ <={budget:g} FA/h [95% CI]", "thr", "false alarms", "wrong", "vs #1 (AUC, 95% CI)"]
    rows = [head]
    for p in report["phrasings"]:
        ask = p["ask"] if len(p["ask"]) <= width else p["ask"][:width - 1] + "…"
        ci = p["recall_ci"]
        recall = "-" if p["recall_at_budget"] is None else (
            f"{p['hits']}/{p['positives']} {p['recall_at_budget']:.2f} [{ci[0]:.2f}-{ci[1]:.2f}]")
        fa = f"{p['false_alarms']}/{p['negatives']}" + ("" if p["fa_per_hour"] is None else f" {p['fa_per_hour']:.1f}/h")
        vs = p["vs_current"]
        versus = "current" if p["current"] else "-" if vs is None else (
            f"{vs['auc_diff']:+.2f} [{vs['low']:+.2f},{vs['high']:+.2f}]" + (" clear" if vs["clear"] else " noise"))
        rows.append([str(p["n"]), ask, _cell(p["auc"]), recall, _cell(p["threshold"], "g"), fa, str(len(p["wrong"])),
                     versus])
    lines = text_table(rows)
    clips = report["clips"]
    lines.append("")
    lines.append(f"{report['rule']}: {clips['positive']} positive and {clips['negative']} negative clip(s) "
                 f"({clips['negative_seconds'] / 60:.1f} min of negatives), {report['backend_requests']} request(s), "
                 f"one per clip; values are {'lifts' if report['use'] == 'lift' else 'scores'}")
    if clips["positive"] < 10 or clips["negative"] < 10:
        lines.append("few labels: rates and differences here are rough; label more alerts before trusting a small gain")
    return "\n".join(lines)


def refusal(report: dict[str, Any], n: int) -> str | None:
    """Why phrasing `n` (1-based) should not replace the current one on this evidence, or None."""
    phrasings = report["phrasings"]
    if not 1 <= n <= len(phrasings):
        return f"--apply {n}: there are phrasings 1 to {len(phrasings)}"
    chosen = phrasings[n - 1]
    if chosen["current"]:
        return None  # only its threshold changes
    vs = chosen["vs_current"]
    if vs is None:
        return (f"--apply {n}: its advantage cannot be measured without both positive and negative clips "
                "(--force writes it anyway)")
    if not vs["clear"]:
        return (f"--apply {n}: its AUC advantage over the current question, {vs['auc_diff']:+.3f}, is within the noise "
                f"(paired bootstrap 95% interval {vs['low']:+.3f} to {vs['high']:+.3f} includes 0); label more clips, "
                "or --force")
    return None
