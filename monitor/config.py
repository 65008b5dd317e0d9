"""The daemon's configuration: typed sections that mirror the YAML tree.

Every problem — unknown key, wrong type, value out of range, a bad `--set` — is reported as
`FILE:LINE: key.path: message`, all of them in one go (see `load_config`).
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field, ValidationError, ValidationInfo, field_validator

from monitor.audio.base import STREAM_SCHEMES
from monitor.configtree import read_tree
from monitor.configtypes import CliText, ConfigPath, Duration, Section, resolve_path
from monitor.engine.settings import ModelSettings
from monitor.incidents.settings import DescribeSettings, IncidentSettings
from monitor.labels.settings import LabelSettings
from monitor.publish.settings import MqttSettings
from monitor.web.settings import WebSettings
from monitor.yamlsource import Problem, ValidationFailed, format_loc, pydantic_problems

MODEL_RATE = 16_000  # every model of the family takes 16 kHz mono

DEFAULT_CONFIG_PATHS = (Path("/etc/audio-monitor/monitor.yaml"),)
# The whole stop takes stop_timeout plus a few seconds (the publisher's last `offline`, the web
# page, the interpreter's exit): 20 s leaves that room inside the unit's TimeoutStopSec=30s.
STOP_TIMEOUT_MAX = 20.0


class AudioSettings(Section):
    """Where sound comes from and how much of it is kept."""

    source: str = "mic"
    """`mic` (a sound card via PortAudio), `file:PATH` (any rate and channels: WAV/FLAC/OGG, and through
    FFmpeg M4A/MP3/3GP/CAF...), or a camera or network stream: `rtsp://`, `rtsps://`, `http://`, `https://`
    (its audio track; `${ENV}` keeps credentials out of the file, and they are never logged)."""
    device: int | str | None = None
    """Input device: an index or a substring of its name (see `audio-monitor devices`); null = system default."""
    sample_rate: int | None = Field(None, ge=8000, le=384_000)
    """Capture rate asked of the device; null = the device's default. Converted to 16 kHz."""
    channels: int = Field(1, ge=1, le=32)
    """Channels captured; they are averaged to mono."""
    buffer_seconds: Duration = 60.0
    """Seconds of 16 kHz audio kept in memory (windows, evidence clips' pre-roll)."""
    block: Duration = Field(0.05, gt=0, le=1)
    """Capture block size (latency of the audio callback)."""
    realtime: bool = True
    """For `file:` sources: pace the file in real time (true) or read it as fast as it is processed."""
    silence_timeout: Duration = Field(60.0, ge=0, le=86400)
    """Capture that delivers only digital silence (exact zeros) this long counts as lost (a dead or
    hardware-muted microphone: a real room is never exactly zero); 0 turns the check off."""

    @field_validator("source", mode="before")
    @classmethod
    def _source(cls, value: Any, info: ValidationInfo) -> Any:
        if not isinstance(value, str):
            return value
        if value == "mic":
            return value
        if value.startswith("file:") and len(value) > 5:
            raw = value[5:]
            path = resolve_path(CliText(raw) if isinstance(value, CliText) else raw, info)
            return f"file:{path}"
        if value.lower().startswith(STREAM_SCHEMES) and len(value.split("://", 1)[1]) > 0:
            return value
        raise ValueError("must be `mic`, `file:PATH` or a stream URL (rtsp://, rtsps://, http://, https://)")

    @property
    def file_path(self) -> Path | None:
        """The file of a `file:` source, else None."""
        return Path(self.source[5:]) if self.source.startswith("file:") else None

    @property
    def stream_url(self) -> str | None:
        """The URL of a camera or network stream source, else None (it may hold credentials: never log it)."""
        return self.source if self.source.lower().startswith(STREAM_SCHEMES) else None


class WindowSettings(Section):
    """The sliding windows the model is asked about."""

    length: Duration = Field(8.0, ge=0.5, le=30)
    """Seconds of audio in each window (the model hears at most 30 s)."""
    hop: Duration = Field(2.0, gt=0, le=30)
    """A new window every `hop`; windows overlap by `length - hop`."""


class VadSettings(Section):
    """webrtcvad speech detection, used by gates and to find utterances."""

    aggressiveness: int = Field(2, ge=0, le=3)
    """0 (lenient, more false speech) to 3 (strict)."""


class MetricsSettings(Section):
    """The Prometheus endpoint."""

    enabled: bool = True
    host: str = "127.0.0.1"
    """Address to listen on; 0.0.0.0 lets a Prometheus on another machine scrape it."""
    port: int = Field(9464, ge=0, le=65535)
    """TCP port of /metrics (0 picks a free one)."""


class ClipSettings(Section):
    """Evidence clips: the audio that turned a rule ON, saved as WAV under state_dir/clips."""

    enabled: bool = True
    """Global switch; nothing is saved while muted, whatever this says."""
    pre_roll: Duration = Field(2.0, ge=0, le=30)
    """Seconds before the window that are saved with it (taken from the ring buffer)."""
    post_roll: Duration = Field(2.0, ge=0, le=30)
    """Seconds after the window added to its clip once heard (the clip is written at once, then completed)."""
    text_rules: bool = False
    """Also save clips for text and match events (speech: off by default for privacy)."""
    max_age: Duration = Field(7 * 86400.0, gt=0)
    """Clips older than this are deleted."""
    max_total_mb: float = Field(500.0, gt=0)
    """When all clips together pass this size, the oldest are deleted first."""


class LogSettings(Section):
    """Logging."""

    level: Literal["debug", "info", "warning", "error"] = "info"


def _source_id(value: str) -> str:
    if not re.fullmatch(r"[a-z0-9_]{1,64}", value):
        raise ValueError(f"a source id is 1-64 of a-z 0-9 _ (it names the room's MQTT topics, Home Assistant "
                         f"device and metrics), got {value!r}")
    return value


SourceId = Annotated[str, AfterValidator(_source_id)]


class SourceSettings(Section):
    """One room: where its sound comes from and which rules listen to it."""

    name: str | None = None
    """Human name of the room (its Home Assistant device); defaults from the source id."""
    audio: AudioSettings = AudioSettings()
    """The same keys as the top-level `audio:` section."""
    rules: ConfigPath | None = None
    """A rule file or folder for this room; default: the top-level `rules`."""


@dataclass(frozen=True)
class Room:
    """One source as the daemon runs it: its id names its topics, its Home Assistant device and its metric labels."""

    id: str
    name: str
    audio: AudioSettings
    rules: Path
    loc: tuple[str, ...] = ()  # where its settings are in the config: () for the top-level `audio:`


class Config(Section):
    """The whole daemon configuration."""

    node_id: str = Field("audio_monitor", pattern=r"^[a-z0-9_]+$", max_length=64)
    """This monitor's id: names its MQTT topics and its Home Assistant device. [a-z0-9_]."""
    name: str | None = None
    """Human name of this monitor (Home Assistant device name); defaults from node_id."""
    audio: AudioSettings = AudioSettings()
    windows: WindowSettings = WindowSettings()
    vad: VadSettings = VadSettings()
    model: ModelSettings = ModelSettings()
    mqtt: MqttSettings = MqttSettings()
    rules: ConfigPath = Path("rules")
    """A rule file, or a folder of *.yaml rule files."""
    state_dir: ConfigPath = Path("state")
    """Writable folder for the outbox, clips and other state."""
    log: LogSettings = LogSettings()
    metrics: MetricsSettings = MetricsSettings()
    clips: ClipSettings = ClipSettings()
    labels: LabelSettings = LabelSettings()
    web: WebSettings = WebSettings()
    """The live page: http://127.0.0.1:8765/ by default."""
    describe: DescribeSettings = DescribeSettings()
    incidents: IncidentSettings = IncidentSettings()
    scores_log: ConfigPath | None = None
    """Append every window's level, speech ratio and scores to this JSONL file (for tuning), as replay writes."""
    stop_timeout: Duration = Field(10.0, gt=0)
    """On SIGTERM: how long the whole stop may take (the window in flight gets at most half, the broker
    the rest to take the outbox; a capture that hangs is not waited for). At most 20s, so that it
    fits in the service's `TimeoutStopSec=30s`."""
    sources: dict[SourceId, SourceSettings] | None = None
    """Several rooms in one daemon (instead of `audio:`): source id -> name, audio, rules."""

    @field_validator("stop_timeout")
    @classmethod
    def _stop_fits_the_service(cls, value: float) -> float:
        if value > STOP_TIMEOUT_MAX:
            raise ValueError(f"at most {STOP_TIMEOUT_MAX:g}s, got {value:g}s: the whole stop must end within the "
                             "service's TimeoutStopSec=30s, after which systemd kills the daemon before the outbox "
                             "is flushed and `offline` is said")
        return value

    @property
    def display_name(self) -> str:
        return self.name or _title(self.node_id)

    @property
    def multi_room(self) -> bool:
        """Whether rooms come from `sources:` (each with its own topics and device) rather than `audio:`."""
        return self.sources is not None

    @property
    def rooms(self) -> list[Room]:
        """Every source, in config order. The single `audio:` section is one room named by node_id."""
        if self.sources is None:
            return [Room(self.node_id, self.display_name, self.audio, self.rules)]
        return [Room(sid, src.name or _title(sid), src.audio, src.rules or self.rules, ("sources", sid))
                for sid, src in self.sources.items()]


def _title(ident: str) -> str:
    return ident.replace("_", " ").title()


def cross_checks(config: Config) -> list[tuple[tuple[str, ...], str]]:
    """Checks that involve several keys or the filesystem; each names the key the user should change.

    `rules:` is checked here, not left to the rule loader, so that a wrong path is reported at
    the config line (or the `--set`) that named it rather than as a bare path.
    """
    out = []
    backend = _backend_problem(config.model)
    if backend:
        out.append((("model", "backend"), backend))
    rules = _rules_problem(config.rules)
    if rules:
        out.append((("rules",), rules))
    w = config.windows
    if w.hop > w.length:
        out.append((("windows", "hop"), f"must not exceed windows.length ({w.length:g}s): audio between windows would never be heard"))
    need = w.length + 2 * w.hop + config.clips.pre_roll + config.clips.post_roll
    out.extend(_sources_problems(config))
    for room in config.rooms:
        if room.audio.buffer_seconds < need:
            out.append(((*room.loc, "audio", "buffer_seconds"), f"must hold at least a window, two hops and the clips' pre- and post-roll ({need:g}s), got {room.audio.buffer_seconds:g}s"))
        if room.loc and config.sources is not None and config.sources[room.id].rules is not None:
            problem = _rules_problem(room.rules) or _read_by_others(config, room)
            if problem:
                out.append(((*room.loc, "rules"), problem))
    return out


def _backend_problem(model: ModelSettings) -> str | None:
    """Why `backend: local` or `salmonn` (the model in this process) cannot run in this install, or None:
    a satellite's base install has no torch nor transformers; the extra named after the backend brings them."""
    if model.backend == "openai":
        return None
    missing = [name for name in ("torch", "transformers") if find_spec(name) is None]
    if not missing:
        return None
    return (f"{model.backend} runs the model in this process and needs {' and '.join(missing)}, which this install "
            f'lacks: pip install "audio-monitor[{model.backend}]" (or backend: openai, to ask a model served elsewhere)')


def _read_by_others(config: Config, room: Room) -> str | None:
    """Why a room's own rule file must move: it lies in a folder other rooms read (the shared
    `rules:`, usually), so they load its rules too, or their ids collide with theirs."""
    from monitor.rules.loader import rule_files  # noqa: PLC0415

    try:
        if room.rules.is_dir():
            return None
        own = room.rules.resolve()
        readers: dict[Path, list[str]] = {}
        for other in config.rooms:
            if other.id != room.id and other.rules.is_dir() and own in {f.resolve() for f in rule_files(other.rules)}:
                readers.setdefault(other.rules, []).append(other.id)
    except (OSError, ValueError):  # an unreadable folder is reported where it is named
        return None
    for folder, ids in readers.items():
        shared = " (the top-level `rules:`)" if folder == config.rules else ""
        who = f"{_and(ids)} also {'reads' if len(ids) == 1 else 'read'}"
        return (f"{room.rules} is in the folder {folder}{shared} that {who}: {'it' if len(ids) == 1 else 'they'} "
                f"would load this room's rules too; move the file out of that folder")
    return None


def _and(items: list[str]) -> str:
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} and {items[-1]}"


def _sources_problems(config: Config) -> list[tuple[tuple[str, ...], str]]:
    """`sources:` against `audio:`, the node id, and each other: two rooms on one device hear the same."""
    if config.sources is None:
        return []
    out: list[tuple[tuple[str, ...], str]] = []
    if not config.sources:
        out.append((("sources",), "name at least one source (or remove `sources:` and use `audio:`)"))
    if "audio" in config.model_fields_set:
        out.append((("audio",), "give either `audio:` (one source) or `sources:` (several rooms), not both; "
                                "move it under sources.<id>.audio"))
    seen: dict[tuple[str, str], str] = {}
    for room in config.rooms:
        if room.id == config.node_id:
            out.append(((*room.loc,), f"a source id must differ from node_id ({config.node_id!r}): that id names "
                                      "the daemon itself"))
        key, where, what = _device_of(room.audio)
        if key in seen:
            out.append(((*room.loc, "audio", where), f"{what} is also sources.{seen[key]}'s: two rooms cannot "
                                                    f"share one device (sources.{seen[key]} and sources.{room.id})"))
        else:
            seen[key] = room.id
    return out


def _device_of(audio: AudioSettings) -> tuple[tuple[str, str], str, str]:
    """(identity, the key that names it, how to name it in a message) of a room's sound source."""
    if audio.file_path is not None:
        return ("file", str(audio.file_path)), "source", f"the file {audio.file_path}"
    if audio.stream_url is not None:
        from monitor.audio.redact import redact_url  # noqa: PLC0415

        return ("stream", audio.stream_url), "source", f"the stream {redact_url(audio.stream_url)}"
    device = "default" if audio.device is None else str(audio.device)
    return ("mic", device), "device", "the system default input" if audio.device is None else f"the input device {device!r}"


def _rules_problem(path: Path) -> str | None:
    """Why `rules:` names nothing the rule loader could read, or None."""
    from monitor.rules.loader import rule_files  # noqa: PLC0415 (monitor.rules is heavier than the config)

    try:
        if not path.exists():
            return f"not found: {path} (name a rule file or a folder of *.yaml files)"
        if path.is_dir() and not rule_files(path):
            return f"no *.yaml rule files in the folder {path}"
    except (OSError, ValueError) as exc:  # unreadable folder; a path with a NUL byte
        return f"cannot read {path}: {getattr(exc, 'strerror', None) or exc}"
    return None


# ---------------------------------------------------------------------------- loading


def load_config(path: str | Path | None, overrides: Sequence[str] = ()) -> Config:
    """Read, expand ${ENV}, apply `--set` overrides and validate; raise ValidationFailed with every problem."""
    tree = read_tree(path, overrides)
    located, problems, override_locs = tree.located, tree.problems, tree.override_locs

    config = None
    try:
        config = Config.model_validate(tree.data, context={"base_dir": tree.base_dir})
    except ValidationError as exc:
        problems.extend(pydantic_problems(exc, located, overrides=override_locs))
    if config is not None:
        for loc, message in cross_checks(config):
            if loc in override_locs:
                problems.append(Problem("--set", None, format_loc(loc), message))
            else:
                problems.append(Problem(located.source, located.line_of(loc), format_loc(loc), message))
    if problems:
        raise ValidationFailed(sorted(problems, key=lambda p: (p.source == "--set", p.line or 0)))
    assert config is not None
    return config


def default_config_path() -> Path | None:
    """$AUDIO_MONITOR_CONFIG, else /etc/audio-monitor/monitor.yaml, else configs/monitor.yaml here."""
    env = os.environ.get("AUDIO_MONITOR_CONFIG")
    if env:
        return Path(env)
    for candidate in (*DEFAULT_CONFIG_PATHS, Path("configs/monitor.yaml")):
        if candidate.exists():
            return candidate
    return None


log = logging.getLogger(__name__)
