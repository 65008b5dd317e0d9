"""The `mqtt:` config section."""

from __future__ import annotations

from pydantic import Field

from monitor.configtypes import Section


class MqttSettings(Section):
    """The MQTT broker that hubs (Home Assistant, Node-RED, openHAB) listen on."""

    host: str = "localhost"
    """Broker host name or address."""
    port: int = Field(1883, ge=1, le=65535)
    """Broker port (1883 plain, 8883 usually TLS)."""
    topic_prefix: str = Field("audio-monitor", pattern=r"^[A-Za-z0-9_\-]+(/[A-Za-z0-9_\-]+)*$")
    """First topic segment(s): topics are {topic_prefix}/{node_id}/..."""
