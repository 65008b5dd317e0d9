"""Labelled recordings for `audio-monitor eval`: a labels.yaml, one folder per rule, or the daemon's labelled set.

Three layouts, because people collect recordings in three ways:

- `DIR/labels.yaml` lists recordings and, per rule, the intervals in which it should fire:

      recordings:
        - file: kitchen.wav                 # relative to labels.yaml
          events:
            fall: [[12.0, 15.5]]            # seconds, or durations such as 1m05s
            baby_crying: [[30, 60], [1m30s, 2m]]
          ignore: [dog_barking]             # optional: rules not scored on this recording

  A rule a recording does not name should not fire in it: its ON events there are false alarms.

- Otherwise `DIR/<rule_id>/*.wav` are positives for that rule (the whole file is the interval
  in which it should fire; other rules are not scored on it) and `DIR/negatives/*.wav` is
  background audio in which no rule should fire.

- `eval --labels`: the clips people marked right, wrong or missed, as the daemon keeps them
  (`monitor.labels.store`: `<room>/<rule>/{positive,negative}/*.wav` with sidecars). Each clip
  is scored for its own rule only: in a positive the rule should fire within the window the
  model heard (the sidecar's `window`; the whole clip when it has none), a negative is audio in
  which it should not fire at all (its whole duration is negative time).

Every problem is reported at once as `FILE:LINE: key.path: message`, like the config and the
rules, and before any model time is spent.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Literal

import soundfile as sf
from pydantic import BeforeValidator, Field, ValidationError

from monitor.audio.formats import AUDIO_FORMATS, AUDIO_SUFFIXES
from monitor.configtypes import ConfigPath, Section, parse_duration
from monitor.errors import first_line
from monitor.rules import RuleSet
from monitor.yamlsource import Located, Problem, ValidationFailed, format_loc, load_yaml, pydantic_problems

log = logging.getLogger(__name__)

LABELS_FILE = "labels.yaml"
NEGATIVES = "negatives"
SCORED_KINDS = ("yes_no", "match")  # text rules have no detections to count

Seconds = Annotated[float, BeforeValidator(parse_duration)]


class _Recording(Section):
    file: ConfigPath
    """The recording, relative to the labels file's folder."""
    events: dict[str, list[tuple[Seconds, Seconds]]] = {}
    """rule id -> [[start, end], ...] in seconds from the start of the recording."""
    ignore: list[str] = []
    """Rules not scored on this recording at all."""


class _LabelsFile(Section):
    recordings: list[_Recording] = Field(min_length=1)


@dataclass(frozen=True)
class Recording:
    """One recording and what should fire in it."""

    path: Path
    duration: float  # seconds
    role: Literal["labelled", "positive", "negative"]
    intervals: dict[str, tuple[tuple[float, float], ...]] = field(default_factory=dict)
    scope: frozenset[str] | None = None  # the rules scored on it; None = every rule

    def scores(self, rule_id: str) -> bool:
        """Whether `rule_id` is evaluated on this recording."""
        return self.scope is None or rule_id in self.scope


@dataclass(frozen=True)
class Dataset:
    folder: Path
    layout: Literal["labels", "folders", "labelset"]
    recordings: list[Recording]

    @property
    def seconds(self) -> float:
        return sum(r.duration for r in self.recordings)


def load_dataset(folder: str | Path, ruleset: RuleSet) -> Dataset:
    """The recordings of `folder` in either layout; raise ValidationFailed with every problem."""
    folder = Path(folder)
    if not folder.is_dir():
        what = "not found" if not folder.exists() else "is not a folder"
        raise ValidationFailed([Problem(str(folder), None, "", f"{what}: eval reads a folder holding {LABELS_FILE} "
                                        f"or one folder of recordings per rule plus {NEGATIVES}/")])
    if (folder / LABELS_FILE).is_file():
        return Dataset(folder, "labels", load_labels(folder / LABELS_FILE, ruleset))
    return Dataset(folder, "folders", scan_folders(folder, ruleset))


def _duration(path: Path) -> tuple[float | None, str | None]:
    """The recording's length, read by libsndfile or, for what phones record, through FFmpeg."""
    try:
        info = sf.info(str(path))
        frames, rate = info.frames, info.samplerate
    except Exception as exc:  # noqa: BLE001 - libsndfile reports corrupt and unknown formats alike
        from monitor.audio.decode import AvFile, error_text  # noqa: PLC0415 (PyAV only when needed)

        try:
            decoded = AvFile(path)
            frames, rate = decoded.frames, decoded.samplerate
            decoded.close()
        except Exception as exc2:  # noqa: BLE001 - corrupt and unknown formats alike
            reason = first_line(exc, with_type=False)
            return None, f"cannot decode ({reason}; FFmpeg: {error_text(exc2)}); expected an audio recording"
    if frames <= 0:
        return None, "the recording is empty"
    return frames / rate, None


def _rule_problem(rule_id: str, ruleset: RuleSet) -> str | None:
    rule = ruleset.get(rule_id)
    scored = [r.id for r in ruleset.rules if r.kind in SCORED_KINDS and r.enabled]
    if rule is None:
        return f"no rule with id {rule_id!r} (rules that can be scored: {', '.join(scored) or 'none'})"
    if rule.kind not in SCORED_KINDS:
        return (f"{rule_id!r} is a text rule: its answers are not detections; label a match rule "
                f"(from: {rule_id}) instead")
    if not rule.enabled:
        return f"rule {rule_id!r} is disabled (enabled: false), so it can never fire; enable it to evaluate it"
    return None


def load_labels(path: Path, ruleset: RuleSet) -> list[Recording]:
    """Read and check a labels.yaml; raise ValidationFailed with every problem."""
    located = load_yaml(path)
    src = located.source
    if not isinstance(located.data, dict):
        raise ValidationFailed([Problem(src, located.line_of(()), "",
                                        "a labels file is a mapping with `recordings:`, a list of {file:, events:}")])
    try:
        parsed = _LabelsFile.model_validate(located.data, context={"base_dir": path.resolve().parent})
    except ValidationError as exc:
        raise ValidationFailed(pydantic_problems(exc, located)) from None
    problems: list[Problem] = []
    out: list[Recording] = []
    for i, item in enumerate(parsed.recordings):
        out_item = _check_recording(item, i, located, ruleset, problems)
        if out_item is not None:
            out.append(out_item)
    if problems:
        raise ValidationFailed(sorted(problems, key=lambda p: p.line or 0))
    return out


def _check_recording(item: _Recording, i: int, located: Located, ruleset: RuleSet,
                     problems: list[Problem]) -> Recording | None:
    def problem(loc: tuple, message: str) -> None:
        full = ("recordings", i, *loc)
        problems.append(Problem(located.source, located.line_of(full), format_loc(full), message))

    before = len(problems)
    duration = None
    if not item.file.is_file():
        problem(("file",), f"{item.file}: recording not found")
    else:
        duration, why = _duration(item.file)
        if why is not None:
            problem(("file",), f"{item.file}: {why}")
    for rule_id in item.ignore:
        message = _rule_problem(rule_id, ruleset)
        if message is not None:
            problem(("ignore",), message)
    intervals: dict[str, tuple[tuple[float, float], ...]] = {}
    for rule_id, spans in item.events.items():
        message = _rule_problem(rule_id, ruleset)
        if message is not None:
            problem(("events", rule_id), message)
            continue
        if rule_id in item.ignore:
            problem(("events", rule_id), f"rule {rule_id!r} is both labelled and ignored on this recording")
        for k, (start, end) in enumerate(spans):
            if end <= start:
                problem(("events", rule_id, k), f"the interval ends ({end:g}s) before it starts ({start:g}s)")
            elif duration is not None and start >= duration:
                problem(("events", rule_id, k), f"the interval starts at {start:g}s, after the end of the "
                                                f"recording ({duration:.1f}s)")
        intervals[rule_id] = tuple(sorted((float(a), float(b)) for a, b in spans))
    if len(problems) > before or duration is None:
        return None
    scope = None
    if item.ignore:
        scope = frozenset(r.id for r in ruleset.rules if r.id not in item.ignore)
    return Recording(item.file, duration, "labelled", intervals, scope)


def scan_folders(folder: Path, ruleset: RuleSet) -> list[Recording]:
    """`folder/<rule_id>/*` positives and `folder/negatives/*`; raise ValidationFailed with every problem."""
    problems: list[Problem] = []
    out: list[Recording] = []
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith("."):
            continue
        if entry.is_file():
            if entry.suffix.lower() in AUDIO_SUFFIXES:
                problems.append(Problem(str(entry), None, "", f"a recording outside a rule folder: move it into "
                                        f"{folder}/<rule_id>/ or {folder}/{NEGATIVES}/, or list it in {LABELS_FILE}"))
            continue
        if entry.name != NEGATIVES:
            message = _rule_problem(entry.name, ruleset)
            if message is not None:
                problems.append(Problem(str(entry), None, "", f"{message}; name folders after rule ids, or {NEGATIVES}"))
                continue
        files = sorted(p for p in entry.iterdir() if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES
                       and not p.name.startswith("."))
        if not files:
            log.warning("%s: no recordings (%s) in this folder", entry, AUDIO_FORMATS)
        for file in files:
            duration, why = _duration(file)
            if why is not None:
                problems.append(Problem(str(file), None, "", why))
                continue
            assert duration is not None
            if entry.name == NEGATIVES:
                out.append(Recording(file, duration, "negative"))
            else:
                out.append(Recording(file, duration, "positive", {entry.name: ((0.0, duration),)},
                                     frozenset({entry.name})))
    if problems:
        raise ValidationFailed(problems)
    if not out:
        raise ValidationFailed([Problem(str(folder), None, "", f"no recordings: add {LABELS_FILE}, or folders "
                                        f"<rule_id>/ of positives and {NEGATIVES}/ of background audio")])
    return out


def load_label_set(folder: str | Path, room: str, ruleset: RuleSet) -> Dataset:
    """One room's labelled set (`folder/<room>/<rule>/{positive,negative}/*.wav`) as recordings to evaluate.

    Labels of a rule the room's rules no longer have (renamed, removed, disabled, now a text
    rule) are left out with one warning per rule; raise ValidationFailed when nothing is left.
    """
    from monitor.labels.store import read_labels  # noqa: PLC0415 (soundfile reads only when asked)

    folder = Path(folder)
    skipped: dict[str, str] = {}
    out: list[Recording] = []
    for clip in read_labels(folder, room=room):
        why = _rule_problem(clip.rule, ruleset)
        if why is not None:
            skipped.setdefault(clip.rule, why)
            continue
        scope = frozenset({clip.rule})
        if clip.verdict == "positive":
            span = clip.window or (0.0, clip.duration)
            out.append(Recording(clip.path, clip.duration, "positive", {clip.rule: (span,)}, scope))
        else:
            out.append(Recording(clip.path, clip.duration, "negative", {}, scope))
    for rule_id, why in skipped.items():
        log.warning("%s: labels left out: %s", folder / room / rule_id, why)
    if not out:
        raise ValidationFailed([Problem(str(folder / room), None, "", "no labelled clips of this room's rules: label "
                                        "alerts as right or wrong (or a missed sound) first")])
    return Dataset(folder / room, "labelset", out)
