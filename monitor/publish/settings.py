"""The `mqtt:` config section.

The password is never required in the config file: it is read from `password_file` or from the
environment variable named by `password_env` when the publisher starts.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from monitor.configtypes import ConfigPath, Duration, Section
from monitor.publish.topics import TOPIC_PATH


class TlsSettings(Section):
    """TLS to the broker. Used when `enabled` is true or a `ca_file` / `certfile` is given."""

    enabled: bool = False
    """Encrypt the connection; with no `ca_file` the system's trusted CAs verify the broker."""
    ca_file: ConfigPath | None = None
    """PEM file of the CA that signed the broker's certificate (a self-made CA, typically)."""
    certfile: ConfigPath | None = None
    """PEM client certificate, for brokers that authenticate clients by certificate."""
    keyfile: ConfigPath | None = None
    """PEM private key of `certfile` (unencrypted); may be omitted when it is inside `certfile`."""
    insecure: bool = False
    """Skip the host-name check of the broker's certificate (the chain is still verified)."""

    @property
    def active(self) -> bool:
        """Whether TLS is used at all."""
        return self.enabled or self.ca_file is not None or self.certfile is not None

    @model_validator(mode="after")
    def _key_needs_cert(self) -> TlsSettings:
        if self.keyfile is not None and self.certfile is None:
            raise ValueError("keyfile is set but certfile is not: give the client certificate too")
        return self


class DiscoverySettings(Section):
    """Home Assistant MQTT discovery."""

    enabled: bool = True
    """Publish a device-based discovery payload so Home Assistant creates the entities itself."""
    prefix: str = Field("homeassistant", pattern=TOPIC_PATH)
    """Home Assistant's discovery prefix (its MQTT integration setting; `homeassistant` by default)."""


class OutboxSettings(Section):
    """The durable queue of events that have not been acknowledged by the broker yet."""

    max_events: int = Field(100_000, ge=100, le=10_000_000)
    """Events kept while the broker is unreachable; past this the oldest are dropped, each logged as an error."""
    max_inflight: int = Field(20, ge=1, le=1000)
    """Events sent but not yet acknowledged at any time; later ones wait in order."""
    fsync: bool = True
    """Flush every accepted event to disk (survives power loss, not only a crash)."""


class RateSettings(Section):
    """A low-value periodic topic: sent at most once per `interval`, dropped first under pressure."""

    enabled: bool = True
    interval: Duration = Field(10.0, ge=0)
    """Minimum time between two messages; 0 sends every one."""


class ScoresSettings(RateSettings):
    """Every rule's latest score, for tuning: off unless asked for, and then every 2 s by default."""

    enabled: bool = False
    interval: Duration = Field(2.0, ge=0)
    """Minimum time between two messages; 0 sends every one."""


class MqttSettings(Section):
    """The MQTT broker that hubs (Home Assistant, Node-RED, openHAB) listen on."""

    host: str = "localhost"
    """Broker host name or address."""
    port: int = Field(1883, ge=1, le=65535)
    """Broker port (1883 plain, 8883 usually TLS)."""
    topic_prefix: str = Field("audio-monitor", pattern=TOPIC_PATH)
    """First topic segment(s): topics are {topic_prefix}/{node_id}/..."""
    client_id: str | None = Field(None, min_length=1, max_length=128)
    """MQTT client id; default `audio-monitor-{node_id}`. Two clients with one id disconnect each other."""
    keepalive: int = Field(30, ge=5, le=3600)
    """Seconds between keep-alive pings; a dead connection is noticed after about 1.5x this."""
    qos: Literal[1, 2] = 1
    """QoS of events, states and discovery. The outbox needs an acknowledgement, so 0 is not offered."""
    username: str | None = None
    """User name for brokers that require a login."""
    password_file: ConfigPath | None = None
    """File holding the password (first line; trailing newline ignored). Keep it mode 0640 with group audio-monitor (or 0600)."""
    password_env: str | None = Field(None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    """Name of an environment variable holding the password (e.g. set by systemd's EnvironmentFile)."""
    tls: TlsSettings = TlsSettings()
    reconnect_min: Duration = Field(1.0, gt=0, le=60)
    """First wait before reconnecting; doubled after each failure ..."""
    reconnect_max: Duration = Field(2.0, gt=0, le=600)
    """... up to this: the longest an alarm waits after the broker is back before the monitor
    notices. A refused attempt costs the broker next to nothing, so a few seconds at most."""
    discovery: DiscoverySettings = DiscoverySettings()
    birth_timeout: Duration = Field(5.0, ge=0, le=600)
    """After each (re)connect, events wait until Home Assistant says `online` on
    `{discovery.prefix}/status` (its birth message), or this long for hubs that send none. A hub
    that subscribes with a clean session, as Home Assistant does, and reconnects a moment after
    the monitor would otherwise miss the events held during an outage: the broker keeps nothing
    for a subscriber that is not connected. Retained states and discovery are sent at once.
    0 sends events at once. Without discovery nothing listens for the birth message, so events
    wait the whole time after each reconnect."""
    outbox: OutboxSettings = OutboxSettings()
    scores: ScoresSettings = ScoresSettings()
    """Every rule's latest score on {prefix}/{node}/scores, for tuning thresholds (off by default)."""
    level: RateSettings = RateSettings()
    """The sound level in dBFS on {prefix}/{node}/level."""

    @model_validator(mode="after")
    def _password_sources(self) -> MqttSettings:
        if self.password_file is not None and self.password_env is not None:
            raise ValueError("give either password_file or password_env, not both")
        if (self.password_file is not None or self.password_env is not None) and not self.username:
            raise ValueError("a password is configured but username is not: set mqtt.username")
        if self.reconnect_max < self.reconnect_min:
            raise ValueError(f"reconnect_max ({self.reconnect_max:g}s) must not be smaller than reconnect_min "
                             f"({self.reconnect_min:g}s): raise reconnect_max too")
        return self
