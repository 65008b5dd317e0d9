"""Saving labelled clips, keeping them under a size cap, and reading them back.

A label is the audio the model heard when it decided (the window, with the evidence clip's
pre- and post-roll around it) and what a person said about it: `positive` (the alert was right,
or it missed something) or `negative` (a false alarm). Each is a float WAV — the exact samples,
so that scoring it again gives what the daemon got — and a JSON sidecar beside it:

    state_dir/labels/<room>/<rule>/positive/20261205-233000_1a2b3c4d.wav
    state_dir/labels/<room>/<rule>/positive/20261205-233000_1a2b3c4d.json

Both are written aside and renamed into place (the sidecar first), so a reader never sees half a
clip and a full disk costs only the label being saved, never one already kept. Labelling the same
event again replaces its earlier label (the newest verdict wins), once the new one is in place.
Nothing is saved while the room is muted, nor for text and match rules (their audio is speech),
as for evidence clips. Saving and pruning run on one thread (the caller's), as clips do.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

from monitor.errors import first_line
from monitor.events import iso_time
from monitor.labels.settings import LabelSettings

log = logging.getLogger(__name__)

FORMAT = 1  # the sidecar's `format`: bumped when a field changes meaning
RATE = 16_000
VERDICTS = ("positive", "negative")
ANSWERS = {"right": "positive", "wrong": "negative", "missed": "positive"}
"""What a person answers (the page's and MQTT's words) -> the verdict kept on disk."""
PRIVATE_KINDS = ("text", "match")  # their audio is speech: never kept, as clips.text_rules defaults
PARTIAL = ".part"
_ID = re.compile(r"[a-z0-9_]{1,64}")


@dataclass(frozen=True)
class Label:
    """One label as the page or MQTT hands it over."""

    room: str
    rule: str
    verdict: str  # positive | negative (see ANSWERS for the words people press)
    audio: np.ndarray  # mono float32 at sample_rate: the window with the clip's pre- and post-roll
    time: float  # epoch seconds: the event's time, or when the person said it missed something
    event: str | None = None  # the event id (None for "it missed something")
    question: str | None = None  # the rule's `ask` when it was heard
    model: str | None = None  # the model that answered
    score: float | None = None  # what it scored (score or lift, as the rule uses)
    window: tuple[float, float] | None = None  # seconds inside `audio` of the window the model heard
    origin: str = "page"  # who labelled: page, mqtt, ...
    sample_rate: int = RATE


@dataclass(frozen=True)
class Saved:
    """What became of a label: saved (`wav`, `sidecar`), or not and why (`reason`, one line)."""

    ok: bool
    reason: str = ""
    wav: Path | None = None
    sidecar: Path | None = None
    replaced: int = 0  # earlier labels of the same event removed
    pruned: int = 0  # old labels deleted to stay under labels.max_mb


class LabelStore:
    """Writes and prunes the labelled set under one folder (state_dir/labels)."""

    def __init__(self, folder: Path, settings: LabelSettings | None = None, clock: Callable[[], float] = time.time):
        self.folder = Path(folder)
        self.settings = settings or LabelSettings()
        self.clock = clock

    def save(self, label: Label, *, muted: bool = False, rule_kind: str = "yes_no") -> Saved:
        """Save `label` unless the room is muted or the rule's audio is private; never raises for a disk problem."""
        refused = _refusal(label, muted, rule_kind)
        if refused is not None:
            return Saved(False, refused)
        folder = self.folder / label.room / label.rule / label.verdict
        stem = _stem(folder, label)
        wav, sidecar = folder / f"{stem}.wav", folder / f"{stem}.json"
        parts = [folder / f".{stem}.wav{PARTIAL}", folder / f".{stem}.json{PARTIAL}"]
        audio = np.clip(np.asarray(label.audio, dtype=np.float32).reshape(-1), -1.0, 1.0)
        try:
            folder.mkdir(parents=True, exist_ok=True)
            parts[0].write_bytes(_wav_bytes(audio, label.sample_rate))  # the OS's own words on a full disk
            parts[1].write_text(json.dumps(self._sidecar(label, len(audio)), indent=2, ensure_ascii=False) + "\n",
                                encoding="utf-8")
            os.replace(parts[1], sidecar)  # the sidecar first: a reader lists WAVs, and finds its sidecar there
            os.replace(parts[0], wav)
        except OSError as exc:
            for path in (*parts, sidecar):
                with contextlib.suppress(OSError):
                    path.unlink(missing_ok=True)
            reason = (f"label not saved: cannot write {wav} ({exc.strerror or first_line(exc)}); "
                      f"free space in {self.folder} or lower labels.max_mb")
            log.error("%s", reason)
            return Saved(False, reason)
        replaced = self._replace_earlier(label, wav) if label.event else 0
        pruned = self.prune(keep=[wav])
        log.info("label saved: %s %s/%s %s (%.1fs)%s", label.verdict, label.room, label.rule, wav.name,
                 len(audio) / label.sample_rate, f", replacing {replaced} earlier" if replaced else "")
        return Saved(True, "", wav, sidecar, replaced, len(pruned))

    def _sidecar(self, label: Label, samples: int) -> dict[str, Any]:
        window = None
        if label.window is not None:
            window = {"start": round(float(label.window[0]), 6), "end": round(float(label.window[1]), 6)}
        return {
            "format": FORMAT,
            "room": label.room,
            "rule": label.rule,
            "verdict": label.verdict,
            "event": label.event,
            "time": iso_time(label.time),
            "ts": round(float(label.time), 3),
            "labelled_at": iso_time(self.clock()),
            "question": label.question,
            "model": label.model,
            "score": None if label.score is None else round(float(label.score), 6),
            "sample_rate": label.sample_rate,
            "duration": round(samples / label.sample_rate, 6),
            "window": window,
            "origin": label.origin,
        }

    def _replace_earlier(self, label: Label, keep: Path) -> int:
        """Remove other labels of the same event of this rule (a verdict changed): the newest one wins."""
        removed = 0
        for verdict in VERDICTS:
            folder = self.folder / label.room / label.rule / verdict
            for sidecar in folder.glob(f"*_{_short(label.event or '')}*.json"):
                wav = sidecar.with_suffix(".wav")
                if wav == keep or _read_sidecar(sidecar).get("event") != label.event:
                    continue
                for path in (wav, sidecar):
                    with contextlib.suppress(OSError):
                        path.unlink(missing_ok=True)
                removed += 1
        return removed

    def prune(self, keep: Iterable[Path] = ()) -> list[Path]:
        """Delete the oldest labels until all of them fit in labels.max_mb; never those in `keep`."""
        if not self.folder.is_dir():
            return []
        protected = {Path(p) for p in keep}
        clips = []
        for path in self.folder.rglob("*"):
            if path.name.endswith(PARTIAL):  # left by a crash mid-write (saving runs on this thread)
                with contextlib.suppress(OSError):
                    path.unlink(missing_ok=True)
                continue
            if path.suffix != ".wav" or path.name.startswith("."):
                continue
            try:
                st = path.stat()
                side = path.with_suffix(".json")
                size = st.st_size + (side.stat().st_size if side.exists() else 0)
            except OSError:
                continue
            clips.append((st.st_mtime, path.name, path, size))
        clips.sort()  # oldest first; the name (it starts with the time) breaks ties
        total = sum(size for *_, size in clips)
        limit = self.settings.max_mb * 1024 * 1024
        deleted = []
        for _mtime, _name, path, size in clips:
            if total <= limit:
                break
            if path in protected:
                continue
            try:
                path.unlink()
            except OSError as exc:
                log.warning("labels: cannot delete %s (%s)", path, exc.strerror or exc)
                continue
            with contextlib.suppress(OSError):
                path.with_suffix(".json").unlink(missing_ok=True)
            total -= size
            deleted.append(path)
        if deleted:
            log.info("labels: deleted the %d oldest labelled clip(s) to stay under labels.max_mb (%g MB); %.1f MB kept",
                     len(deleted), self.settings.max_mb, total / (1024 * 1024))
        return deleted


def _wav_bytes(audio: np.ndarray, rate: int) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, audio, rate, subtype="FLOAT", format="WAV")
    return buffer.getvalue()


def verdict_of(answer: str) -> str | None:
    """The verdict kept for what a person answered (right, wrong, missed, or a verdict itself); None if neither."""
    if answer in VERDICTS:
        return answer
    return ANSWERS.get(answer)


def _refusal(label: Label, muted: bool, rule_kind: str) -> str | None:
    if muted:
        return f"label not saved: room {label.room} is muted, and nothing it hears is kept while muted"
    if rule_kind in PRIVATE_KINDS:
        return (f"label not saved: {label.rule} is a {rule_kind} rule, whose audio is speech; labels are kept "
                "for yes/no rules only")
    for what, value in (("room", label.room), ("rule", label.rule)):
        if not isinstance(value, str) or not _ID.fullmatch(value):
            return f"label not saved: {what} {value!r} is not an id (1-64 of a-z 0-9 _)"
    if label.verdict not in VERDICTS:
        return f"label not saved: verdict {label.verdict!r} is not one of {', '.join(VERDICTS)}"
    audio = np.asarray(label.audio)
    if audio.size == 0:
        return "label not saved: no audio (the clip is no longer in memory)"
    if audio.ndim != 1 and not (audio.ndim == 2 and 1 in audio.shape):
        return f"label not saved: expected mono audio, got an array of shape {audio.shape}"
    return None


def _short(event: str) -> str:
    """The event id's first 8 letters and digits: what a file name carries of it."""
    return re.sub(r"[^A-Za-z0-9]", "", event)[:8]


def _stem(folder: Path, label: Label) -> str:
    """`YYYYmmdd-HHMMSS_<event id, 8 chars | missed>`, made unique in its folder."""
    stamp = datetime.fromtimestamp(label.time).strftime("%Y%m%d-%H%M%S")
    base = f"{stamp}_{_short(label.event) if label.event else 'missed'}"
    stem, n = base, 1
    while (folder / f"{stem}.wav").exists() or (folder / f"{stem}.json").exists():
        n += 1
        stem = f"{base}-{n}"
    return stem


# ---------------------------------------------------------------------------- reading


@dataclass(frozen=True)
class LabelClip:
    """One labelled clip on disk, as `eval --labels` and `compare` read it."""

    path: Path  # the WAV
    room: str
    rule: str
    verdict: str
    duration: float  # seconds
    sample_rate: int
    info: dict[str, Any] = field(default_factory=dict)  # the sidecar; {} for a clip without one

    @property
    def name(self) -> str:
        """`room/rule/verdict/file.wav`: how reports name the clip."""
        return f"{self.room}/{self.rule}/{self.verdict}/{self.path.name}"

    @property
    def window(self) -> tuple[float, float] | None:
        """Seconds inside the clip of the window the model heard, when the sidecar says (and it fits)."""
        w = self.info.get("window")
        try:
            start, end = float(w["start"]), float(w["end"])  # type: ignore[index]
        except (TypeError, KeyError, ValueError):
            return None
        if not 0 <= start < end or start >= self.duration:
            return None
        return start, min(end, self.duration)


def read_labels(folder: Path, room: str | None = None, rule: str | None = None) -> list[LabelClip]:
    """Every labelled clip under `folder` (`<room>/<rule>/<verdict>/*.wav`), in name order.

    A clip that cannot be read is left out with a warning; a missing or unreadable sidecar is an
    empty `info` (a WAV a person copied in by hand counts like the others).
    """
    folder = Path(folder)
    out: list[LabelClip] = []
    if room is not None:
        rooms = [folder / room]
    else:
        rooms = sorted(p for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []
    for room_dir in rooms:
        if not room_dir.is_dir():
            continue
        rules = [room_dir / rule] if rule is not None else sorted(p for p in room_dir.iterdir() if p.is_dir())
        for rule_dir in rules:
            for verdict in VERDICTS:
                for wav in sorted((rule_dir / verdict).glob("*.wav")):
                    if wav.name.startswith("."):
                        continue
                    try:
                        info = sf.info(str(wav))
                    except Exception as exc:  # noqa: BLE001 - libsndfile reports corrupt and unknown files alike
                        log.warning("%s: skipped, cannot read it (%s)", wav, first_line(exc, with_type=False))
                        continue
                    if info.frames <= 0:
                        log.warning("%s: skipped, it holds no audio", wav)
                        continue
                    out.append(LabelClip(wav, room_dir.name, rule_dir.name, verdict, info.frames / info.samplerate,
                                         info.samplerate, _read_sidecar(wav.with_suffix(".json"))))
    return out


def load_audio(clip: LabelClip, start: float | None = None, end: float | None = None) -> np.ndarray:
    """The clip's audio (seconds [start, end) of it) as the model hears it: mono float32 at 16 kHz."""
    from monitor.audio.convert import Converter

    audio, rate = sf.read(str(clip.path), dtype="float32", always_2d=True)
    a = 0 if start is None else int(round(start * rate))
    b = len(audio) if end is None else int(round(end * rate))
    convert = Converter(rate, RATE)
    out = convert(audio[a:b])
    return np.concatenate([out, convert.flush()]) if rate != RATE else out


def counts(folder: Path, room: str) -> dict[str, dict[str, int]]:
    """rule -> {positive: n, negative: n} of one room's labels (no audio is read)."""
    out: dict[str, dict[str, int]] = {}
    room_dir = Path(folder) / room
    if not room_dir.is_dir():
        return out
    for rule_dir in sorted(p for p in room_dir.iterdir() if p.is_dir()):
        out[rule_dir.name] = {v: sum(1 for p in (rule_dir / v).glob("*.wav") if not p.name.startswith("."))
                              for v in VERDICTS}
    return out


def compare_dir(state_dir: Path, room: str, rule: str) -> Path:
    """Where `audio-monitor compare` writes a room's rule's report by default, and where the daemon's page finds it."""
    return Path(state_dir) / "compare" / room / f"compare-{rule}"


def _read_sidecar(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        log.warning("%s: sidecar not read (%s); the clip counts without it", path, exc)
        return {}
    return data if isinstance(data, dict) else {}
