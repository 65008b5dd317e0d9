"""What a rule file may say: three kinds of rule, each a strict, frozen pydantic model.

- `yes_no` rules ask the model a yes/no question about every window and turn a binary sensor
  ON and OFF (threshold with hysteresis, patience, hold, cooldown).
- `text` rules ask a free-text question ("what is being said?") once per speech utterance.
- `match` rules (`from:` + `match:`) fire when a text rule's answer matches a regex.

The kind is decided by the keys a rule has (`from:` makes a match rule, `answer: text` a text
rule, anything else is yes_no), so each kind rejects the keys that mean nothing to it and the
user learns at `check` time, not by a sensor that never moves.
"""

from __future__ import annotations

import functools
import re
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, field_validator, model_validator

from monitor.configtypes import Duration, Section
from monitor.rules.schedule import Schedule

RULE_ID = re.compile(r"[a-z0-9_]+")

# Home Assistant's BinarySensorDeviceClass values (binary_sensor/__init__.py); `config` is not
# a valid entity_category for sensors, so only `diagnostic` is offered.
BINARY_SENSOR_CLASSES = (
    "battery", "battery_charging", "carbon_monoxide", "cold", "connectivity", "door", "garage_door",
    "gas", "heat", "light", "lock", "moisture", "motion", "moving", "occupancy", "opening", "plug",
    "power", "presence", "problem", "running", "safety", "smoke", "sound", "tamper", "update",
    "vibration", "window",
)
EVENT_CLASSES = ("button", "doorbell", "motion")  # Home Assistant's EventDeviceClass values

RuleKind = Literal["yes_no", "text", "match"]

DESCRIBE_PROMPT = "In one short sentence, describe what you hear."


def _number(value: Any) -> Any:
    """YAML `yes`/`true` must not silently become 1.0."""
    if isinstance(value, bool):
        raise ValueError("expected a number, not true/false")
    return value


def _level(value: Any) -> Any:
    value = _number(value)
    if isinstance(value, (int, float)) and not 0.0 <= value <= 1.0:
        raise ValueError(f"must be between 0 and 1 (got {value:g})")
    return value


Level = Annotated[float, BeforeValidator(_level), Field(ge=0.0, le=1.0)]
"""A probability-like level in [0, 1]: threshold, release, speech ratio."""


def default_name(rule_id: str) -> str:
    """'baby_crying' -> 'Baby crying' (the Home Assistant entity name when `name` is left out)."""
    return rule_id.replace("_", " ").strip().capitalize() or rule_id


@functools.lru_cache(maxsize=256)
def compile_match(pattern: str, case_sensitive: bool) -> re.Pattern[str]:
    return re.compile(pattern, 0 if case_sensitive else re.IGNORECASE)


class Gate(Section):
    """Measurements that must pass before the question is asked at all (saves model time)."""

    min_dbfs: Annotated[float, BeforeValidator(_number), Field(ge=-120.0, le=0.0)] | None = None
    """Skip windows (text rules: utterances) quieter than this RMS level, in dBFS (-120..0)."""
    speech: Level | None = None
    """Skip windows (text rules: utterances) whose fraction of webrtcvad speech frames is below this."""

    def passes(self, level_dbfs: float, speech_ratio: float) -> bool:
        if self.min_dbfs is not None and level_dbfs < self.min_dbfs:
            return False
        return self.speech is None or speech_ratio >= self.speech


class _RuleBase(Section):
    id: str
    """Stable id, [a-z0-9_]: names the MQTT topics and the Home Assistant entity."""
    name: str = Field("", max_length=100)
    """Human name (Home Assistant entity name); default: the id with spaces, capitalised."""
    enabled: bool = True
    """false: the rule is validated but never asked and never fires."""
    schedule: Schedule | None = None
    """Local-time ranges when the rule is active; default: always."""
    icon: str | None = Field(None, pattern=r"^mdi:[a-z0-9-]+$")
    """Home Assistant icon, e.g. mdi:baby-face-outline; default: the device class's icon."""
    entity_category: Literal["diagnostic"] | None = None
    """`diagnostic` files the entity under Diagnostic in Home Assistant instead of Sensors."""

    @model_validator(mode="before")
    @classmethod
    def _fill_name(cls, data: Any) -> Any:
        name = data.get("name") if isinstance(data, dict) else None
        if isinstance(data, dict) and not (isinstance(name, str) and name.strip()) and isinstance(data.get("id"), str):
            data = {**data, "name": default_name(data["id"])}
        return data

    @field_validator("id", mode="before")
    @classmethod
    def _id(cls, value: Any) -> Any:
        if isinstance(value, str) and (not RULE_ID.fullmatch(value) or len(value) > 64):
            raise ValueError(
                f"{value!r} is not a valid id: use lower-case letters, digits and _ (at most 64), "
                "e.g. baby_crying; it names MQTT topics and Home Assistant entities"
            )
        return value

    @field_validator("name", mode="before")
    @classmethod
    def _name(cls, value: Any) -> Any:
        return value.strip() if isinstance(value, str) else value

    @property
    def kind(self) -> RuleKind:
        return self.answer  # type: ignore[attr-defined,no-any-return]

    def question(self) -> tuple[Any, ...]:
        """What the rule asks; when this changes on reload, the rule's state starts fresh."""
        raise NotImplementedError


class _Asking(_RuleBase):
    ask: str = Field(min_length=1, max_length=2000)
    """The prompt sent to the model with the audio, exactly as written."""
    gate: Gate = Gate()

    @field_validator("ask", mode="before")
    @classmethod
    def _ask(cls, value: Any) -> Any:
        return " ".join(value.split()) if isinstance(value, str) else value


class YesNoRule(_Asking):
    """A standing yes/no question; its score drives a binary sensor."""

    answer: Literal["yes_no"] = "yes_no"
    use: Literal["score", "lift"] = "score"
    """score: P(yes); lift: P(yes) minus the same question's P(yes) on silence."""
    threshold: Level = 0.7
    """ON when the value is at or above this (after `patience` windows)."""
    release: Level = 0.6
    """Stays ON while at or above this; OFF below it once `hold` has passed. Default: threshold - 0.1."""
    patience: int = Field(1, ge=1, le=1000)
    """Consecutive asked windows at or above threshold needed to turn ON."""
    hold: Duration = Field(0.0, le=86400)
    """Stay ON at least this long after the last window at or above `release`."""
    cooldown: Duration = Field(0.0, le=7 * 86400)
    """No new ON event until this long after the previous ON event."""
    device_class: Literal[BINARY_SENSOR_CLASSES] | None = None  # type: ignore[valid-type]
    """Home Assistant binary_sensor device class (sound, safety, smoke, ...)."""
    describe: bool | None = None
    """When the rule turns ON, ask the model what it heard (`describe_prompt`), when it has time, and send
    the answer as a `described` event and with the incident. Default: true for `device_class: safety`."""
    describe_prompt: str = Field(DESCRIBE_PROMPT, min_length=1, max_length=2000)
    """The question asked about the window that turned the rule ON."""

    @property
    def describes(self) -> bool:
        """Whether an ON of this rule is described (`describe`, or its default)."""
        return self.describe if self.describe is not None else self.device_class == "safety"

    @field_validator("describe_prompt", mode="before")
    @classmethod
    def _describe_prompt(cls, value: Any) -> Any:
        return " ".join(value.split()) if isinstance(value, str) else value

    @model_validator(mode="before")
    @classmethod
    def _default_release(cls, data: Any) -> Any:
        if isinstance(data, dict) and "release" not in data:
            threshold = data.get("threshold", 0.7)
            if isinstance(threshold, (int, float)) and not isinstance(threshold, bool) and 0 <= threshold <= 1:
                data = {**data, "release": round(max(0.0, threshold - 0.1), 6)}
        return data

    def question(self) -> tuple[Any, ...]:
        return ("yes_no", self.ask, self.use)


class TextRule(_Asking):
    """A free-text question, answered once per speech utterance; its answers are `text` events."""

    answer: Literal["text"]
    max_new_tokens: int = Field(64, ge=1, le=1024)
    """Longest answer, in tokens (about 0.75 words each)."""

    @property
    def device_class(self) -> None:
        """Text rules are plain Home Assistant sensors, without a device class."""
        return None

    def question(self) -> tuple[Any, ...]:
        return ("text", self.ask)


class MatchRule(_RuleBase):
    """Fires a `match` event when the answer of the text rule `from` matches the regex `match`."""

    answer: Literal["match"] = "match"
    source: str = Field(alias="from")
    """The id of a text rule."""
    match: str = Field(min_length=1)
    """A Python regular expression, searched anywhere in the transcript."""
    case_sensitive: bool = False
    cooldown: Duration = Field(0.0, le=7 * 86400)
    """No new match event until this long after the previous one."""
    device_class: Literal[EVENT_CLASSES] | None = None  # type: ignore[valid-type]
    """Home Assistant event entity device class (button, doorbell, motion)."""

    @field_validator("match")
    @classmethod
    def _regex(cls, value: str) -> str:
        try:
            pattern = re.compile(value)
        except re.error as exc:
            where = f" at position {exc.pos}" if exc.pos is not None else ""
            raise ValueError(f"not a valid regular expression: {exc.msg}{where}") from None
        if pattern.search("") is not None:
            raise ValueError("the pattern matches an empty transcript, so it would fire on every utterance")
        return value

    @property
    def ask(self) -> None:
        """Match rules ask the model nothing."""
        return None

    @property
    def pattern(self) -> re.Pattern[str]:
        return compile_match(self.match, self.case_sensitive)

    def question(self) -> tuple[Any, ...]:
        return ("match", self.source, self.match, self.case_sensitive)


Rule = YesNoRule | TextRule | MatchRule

MODELS: dict[str, type[_RuleBase]] = {"yes_no": YesNoRule, "text": TextRule, "match": MatchRule}


def keys_of(kind: str) -> list[str]:
    """The YAML keys a rule of `kind` accepts."""
    model = MODELS[kind]
    return [f.alias or name for name, f in model.model_fields.items()]


def kind_of(data: dict[str, Any]) -> str | None:
    """The kind a raw rule mapping asks for; None when `answer` is not a kind at all."""
    if "from" in data:
        return "match"
    answer = data.get("answer", "yes_no")
    return answer if isinstance(answer, str) and answer in MODELS else None  # `answer: [text]` is no kind


def cross_checks(rule: Rule, written: set[str]) -> list[tuple[str, str]]:
    """Checks across keys of one rule: (key, message). `written`: the keys the file set."""
    out = []
    if isinstance(rule, YesNoRule) and "release" in written and rule.release > rule.threshold:
        out.append(("release", f"must not be above threshold ({rule.threshold:g}): the rule would switch OFF "
                               "while still at the level that switched it ON"))
    return out
