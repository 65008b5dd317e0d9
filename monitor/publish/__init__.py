"""MQTT publishing: durable outbox, client, Home Assistant discovery.

`from monitor.publish import Publisher, EntitySpec` works; the submodules load on first use, so
that reading the config (which needs only `monitor.publish.settings`) does not import paho.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "EntitySpec": "monitor.publish.discovery",
    "MqttSettings": "monitor.publish.settings",
    "OutboxError": "monitor.publish.outbox",
    "Publisher": "monitor.publish.publisher",
    "PublisherError": "monitor.publish.client",
    "PublisherStats": "monitor.publish.publisher",
    "check_segment": "monitor.publish.topics",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'monitor.publish' has no attribute {name!r}")
