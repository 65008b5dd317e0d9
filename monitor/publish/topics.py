"""Every MQTT topic the monitor uses, built from validated segments.

Ids that become topic segments (node id, rule ids) are checked here, at the one place topics are
made, so that no rule id or payload can reach into another topic with `/`, `+` or `#`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

TOPIC_PATH = r"^[A-Za-z0-9_\-]+(/[A-Za-z0-9_\-]+)*$"
"""One or more safe topic segments joined by `/` (the config's prefixes are validated with it too)."""

_SEGMENT = re.compile(r"^[A-Za-z0-9_\-]{1,64}$")
_PATH = re.compile(TOPIC_PATH)


def check_segment(value: str, what: str) -> str:
    """Return `value` if it is one safe topic segment ([A-Za-z0-9_-], 1-64 chars); else ValueError."""
    if not isinstance(value, str) or not _SEGMENT.match(value):
        raise ValueError(
            f"{what} {value!r} cannot be used in an MQTT topic: use 1-64 of the characters A-Z a-z 0-9 _ -"
        )
    return value


def check_path(value: str, what: str) -> str:
    """Return `value` if it is one or more safe segments joined by `/`; else ValueError."""
    if not isinstance(value, str) or not _PATH.match(value):
        raise ValueError(f"{what} {value!r} is not a valid topic prefix: segments of A-Z a-z 0-9 _ - joined by /")
    return value


@dataclass(frozen=True)
class Topics:
    """The topic tree of one monitor: {prefix}/{node}/... and the Home Assistant ones."""

    prefix: str
    node: str
    discovery_prefix: str = "homeassistant"

    def __post_init__(self) -> None:
        check_path(self.prefix, "mqtt.topic_prefix")
        check_segment(self.node, "node_id")
        check_path(self.discovery_prefix, "mqtt.discovery.prefix")

    @property
    def base(self) -> str:
        return f"{self.prefix}/{self.node}"

    @property
    def status(self) -> str:
        """`online` / `offline` (retained; `offline` is also the Last Will)."""
        return f"{self.base}/status"

    @property
    def info(self) -> str:
        """Retained JSON health: last rule reload, lag, skipped windows, outbox depth."""
        return f"{self.base}/info"

    @property
    def mute_state(self) -> str:
        return f"{self.base}/mute"

    @property
    def hearing(self) -> str:
        """Retained JSON: can the microphone hear? `{"problem": "ON"|"OFF", "reason": ..., "detail": ...}`."""
        return f"{self.base}/hearing"

    @property
    def model(self) -> str:
        """Retained JSON: does the model answer? `{"problem": "ON"|"OFF", "reason": ..., "detail": ..., "rooms": [...]}`."""
        return f"{self.base}/model"

    @property
    def scores(self) -> str:
        return f"{self.base}/scores"

    @property
    def level(self) -> str:
        return f"{self.base}/level"

    @property
    def command_filter(self) -> str:
        """Subscription for inbound commands: {base}/set/+."""
        return f"{self.base}/set/+"

    def command(self, name: str) -> str:
        return f"{self.base}/set/{check_segment(name, 'command')}"

    def rule_state(self, rule_id: str) -> str:
        return f"{self.base}/{check_segment(rule_id, 'rule id')}/state"

    def rule_event(self, rule_id: str) -> str:
        return f"{self.base}/{check_segment(rule_id, 'rule id')}/event"

    def rule_incident(self, rule_id: str) -> str:
        """One JSON per incident (one sound, every room that heard it), on the node's (the daemon's) topics."""
        return f"{self.base}/{check_segment(rule_id, 'rule id')}/incident"

    def rule_text(self, rule_id: str) -> str:
        return f"{self.base}/{check_segment(rule_id, 'rule id')}/text"

    def rule_enabled(self, rule_id: str) -> str:
        """`ON` / `OFF` (retained): whether the rule is asked; the state of its switch."""
        return f"{self.base}/{check_segment(rule_id, 'rule id')}/enabled"

    def rule_command(self, rule_id: str) -> str:
        """The rule's switch: `ON` / `OFF` on {base}/{rule}/set/enabled."""
        return f"{self.base}/{check_segment(rule_id, 'rule id')}/set/enabled"

    @property
    def rule_command_filter(self) -> str:
        """Subscription for the rules' switches: {base}/+/set/enabled."""
        return f"{self.base}/+/set/enabled"

    def rule_of_command(self, topic: str, name: str = "enabled") -> str | None:
        """The rule id of a topic {base}/{rule}/set/{name} (`enabled`, `label`); None for any other topic."""
        suffix = f"/set/{name}"
        head, _, rule = topic.removesuffix(suffix).rpartition("/")
        if head != self.base or not topic.endswith(suffix) or not _SEGMENT.match(rule):
            return None
        return rule

    def rule_label(self, rule_id: str) -> str:
        """A rule's labels: `{"event": ID, "verdict": "right"|"wrong"}` or `{"missed_seconds": N}` on {base}/{rule}/set/label."""
        return f"{self.base}/{check_segment(rule_id, 'rule id')}/set/label"

    @property
    def rule_label_filter(self) -> str:
        """Subscription for the rules' labels: {base}/+/set/label."""
        return f"{self.base}/+/set/label"

    @property
    def discovery(self) -> str:
        """Device-based discovery: {discovery_prefix}/device/{node}/config."""
        return f"{self.discovery_prefix}/device/{self.node}/config"

    @property
    def ha_status(self) -> str:
        """Home Assistant's birth / last-will topic."""
        return f"{self.discovery_prefix}/status"
