"""Load a blueprint the way Home Assistant does and run its automation on incident messages.

Run with the Python of an environment that has the `homeassistant` package (`.venv-ha`):
`python ha_blueprint.py BLUEPRINT CASES.json` prints one JSON line: what each case's message made the
automation do (the notify service it called and with what, or that its condition said no).

What it does, all with Home Assistant's own code: the blueprint file is read by Home Assistant's YAML
loader (`!input`), checked against the blueprint schema (`Blueprint`), its inputs substituted
(`BlueprintInputs`), the resulting automation validated as an automation config item (trigger
platform mqtt, condition, actions), and then, per case, its variables, condition and actions run in a
real `HomeAssistant` core (the same script engine, templates and service registry) with a notify
service and an mqtt.publish that record their calls. A case is an MQTT message (`topic`, `payload`)
or a notification button pressed (`action`: the companion app's mobile_app_notification_action).
"""

from __future__ import annotations

import asyncio
import json
import sys
import tempfile
from typing import Any


async def run(path: str, cases: list[dict[str, Any]]) -> dict[str, Any]:
    from homeassistant import bootstrap, loader  # bootstrap first: the core components in the order Home Assistant imports them
    from homeassistant.components.automation.config import async_validate_config_item
    from homeassistant.components.blueprint.models import Blueprint, BlueprintInputs
    from homeassistant.config_entries import ConfigEntries, ConfigEntry
    from homeassistant.const import __version__
    from homeassistant.core import Context, HomeAssistant, ServiceCall
    from homeassistant.helpers import condition as condition_helper
    from homeassistant.helpers.script import Script
    from homeassistant.util.yaml import load_yaml

    out: dict[str, Any] = {"version": __version__, "cases": []}
    blueprint = Blueprint(load_yaml(path), expected_domain="automation", path=path)
    out["name"] = blueprint.name
    out["inputs"] = sorted(blueprint.inputs)
    out["blueprint_errors"] = blueprint.validate()

    with tempfile.TemporaryDirectory() as config_dir:
        hass = HomeAssistant(config_dir)
        loader.async_setup(hass)
        await bootstrap.load_registries(hass)
        hass.config_entries = ConfigEntries(hass, {})
        await hass.config_entries.async_initialize()
        await hass.async_start()
        calls: list[dict[str, Any]] = []

        async def record(call: ServiceCall) -> None:
            calls.append({"service": f"{call.domain}.{call.service}", **call.data})

        hass.services.async_register("notify", "phones", record)
        from homeassistant.components.mqtt import MQTT_PUBLISH_SCHEMA  # its own checks: the payload as it is published

        hass.services.async_register("mqtt", "publish", record, schema=MQTT_PUBLISH_SCHEMA)  # a label button's message
        for case in cases:
            given = dict(case["input"])
            if "phone" in case:  # a phone of the companion app, by its name: its device, and its notify service
                given["notify_device"] = _phone(hass, case["phone"], ConfigEntry)
                hass.services.async_register("notify", "mobile_app_" + case["phone"].lower().replace(" ", "_"), record)
            inputs = BlueprintInputs(blueprint, {"use_blueprint": {"path": path, "input": given}})
            inputs.validate()
            automation = inputs.async_substitute()
            validated = await async_validate_config_item(hass, "test", automation)
            config = validated.config if hasattr(validated, "config") else validated
            assert getattr(validated, "validation_failed", False) is False, getattr(validated, "validation_error", "")
            triggers = {t["platform"]: t for t in config["trigger"]}
            trigger = triggers["mqtt"]
            if "action" in case:  # a notification's button pressed: the companion app's event
                event = triggers["event"]
                types = [getattr(t, "template", t) for t in event["event_type"]]
                assert types == ["mobile_app_notification_action"], event
                trigger_vars: dict[str, Any] = {
                    "platform": "event", "id": event.get("id", "1"), "description": "event",
                    "event": {"event_type": "mobile_app_notification_action", "data": {"action": case["action"]}}}
            else:
                raw = case["payload"] if isinstance(case["payload"], str) else json.dumps(case["payload"])
                trigger_vars = {"platform": "mqtt", "id": trigger.get("id", "0"), "topic": case["topic"], "payload": raw,
                                "qos": 0, "description": f"mqtt topic {case['topic']}"}
                try:
                    trigger_vars["payload_json"] = json.loads(raw)
                except ValueError:
                    pass
            variables: dict[str, Any] = {"trigger": trigger_vars}
            variables = config["variables"].async_render(hass, variables)
            passes = True
            for cond_config in config.get("condition", []):
                check = await condition_helper.async_from_config(hass, cond_config)
                passes = passes and bool(check(hass, variables))
            before = len(calls)
            if passes:
                script = Script(hass, config["action"], "test", "automation")
                await script.async_run(run_variables=variables, context=Context())
                await hass.async_block_till_done()
            topic = getattr(trigger["topic"], "template", trigger["topic"])
            out["cases"].append({"topic_matches": "action" in case or _matches(topic, case["topic"]), "condition": passes,
                                 "calls": calls[before:]})
        await hass.async_stop()
    return out


def _phone(hass: Any, name: str, entry_type: Any) -> str:
    """A device as the companion app registers it (a mobile_app config entry, not set up here); its id."""
    from homeassistant.helpers import device_registry

    entry = entry_type(version=1, minor_version=1, domain="mobile_app", title=name, data={}, source="user")
    hass.config_entries._entries[entry.entry_id] = entry  # noqa: SLF001 - known to the registry, without setting it up
    device = device_registry.async_get(hass).async_get_or_create(
        config_entry_id=entry.entry_id, identifiers={("mobile_app", entry.entry_id)}, name=name, manufacturer="Google")
    return device.id


def _matches(pattern: str, topic: str) -> bool:
    """MQTT wildcard match (+ one level, # the rest)."""
    want, got = pattern.split("/"), topic.split("/")
    for i, part in enumerate(want):
        if part == "#":
            return True
        if i >= len(got) or (part != "+" and part != got[i]):
            return False
    return len(want) == len(got)


if __name__ == "__main__":
    with open(sys.argv[2], encoding="utf-8") as fh:
        cases = json.load(fh)
    print(json.dumps(asyncio.run(run(sys.argv[1], cases)), default=str))
