"""MQTT as one of the daemon's sinks: events durably, each room's retained state, levels and scores, the status.

Every call only queues work for the publisher's worker (see `monitor.publish.publisher`), so the
daemon's main thread never waits for the broker.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from monitor.engine.api import Result
from monitor.events import Event
from monitor.publish.discovery import EntitySpec
from monitor.rules import RuleSet
from monitor.sinks import RoomState, Status

if TYPE_CHECKING:
    from monitor.publish.publisher import Publisher

# The event lines keep the logger name they have always had (`monitor.sinks: event ...`): it is
# what people search their journal for.
log = logging.getLogger("monitor.sinks")


def entity_specs(ruleset: RuleSet) -> list[EntitySpec]:
    """Home Assistant entities for the enabled rules."""
    return [EntitySpec.of(r) for r in ruleset.rules if r.enabled]


class MqttSink:
    """Events (durably, via the outbox), states, texts, levels and scores on each room's topics;
    the node's whole-home mute and Model problem sensor, and the retained status."""

    def __init__(self, publisher: Publisher):
        self.publisher = publisher
        self.hub = publisher.node.layout == "daemon"  # a whole home: the node is a hub device of its own
        self._muted_all: bool | None = None  # as last published (the hub's switch)
        self._failed: tuple[str, ...] | None = None  # rooms the Model sensor last named
        self._yes_no: dict[str, list[EntitySpec]] = {}  # each room's yes_no rules: the node's incident entities
        if self.hub:
            publisher.node.set_entities([])  # the hub device: whole-home mute, reload

    def window(self, room: str, result: Result) -> None:
        channel = self.publisher.room(room)
        channel.publish_level(result.window.dbfs)
        if result.scores:
            channel.publish_scores({k: {"score": round(s.score, 4), "lift": round(s.lift, 4)}
                                    for k, s in result.scores.items()})

    def event(self, room: str, event: Event) -> None:
        channel = self.publisher.room(room)
        route = channel.publish_event(event)
        # logged once the event is safe (stored, or handed over directly): the log never claims more.
        # What was said stays out of the log at INFO (clips of text rules are off for the same reason):
        # only that there is a transcript and its length; the words at DEBUG.
        detail = (f" score={event.score:.3f}" if event.score is not None
                  else f" text={len(event.text)} chars" if event.text
                  else f" reason={event.reason}" if event.reason else "")
        where = "" if room == self.publisher.node_id else f"{room}/"
        log.info("event %s%s %s id=%s%s via=%s", where, event.rule_id, event.kind, event.id, detail, route)
        if event.text:
            log.debug("event %s%s %s id=%s text=%r", where, event.rule_id, event.kind, event.id, event.text)
        if event.kind in ("on", "off"):
            channel.publish_state(event.rule_id, event.kind == "on")
        elif event.kind == "text" and event.text is not None:
            channel.publish_text(event.rule_id, event.text)

    def room_state(self, room: str, state: RoomState) -> None:
        """The room's mute switch, its hearing (the Microphone problem sensor), its device and rule states."""
        channel = self.publisher.room(room)
        if "mute" in state.changed:
            channel.set_muted(state.own_mute)
        if "hearing" in state.changed:
            channel.set_hearing(state.hearing.ok, state.hearing.reason, state.hearing.detail)
        if "rules" in state.changed:
            channel.set_entities(entity_specs(state.rules))
            for rule_id, on in state.rule_states.items():
                channel.publish_state(rule_id, on)
            self._yes_no[room] = [spec for spec in entity_specs(state.rules) if spec.kind == "yes_no"]
            union: dict[str, EntitySpec] = {}
            for specs in self._yes_no.values():
                for spec in specs:
                    union.setdefault(spec.id, spec)
            self.publisher.node.set_incidents(sorted(union.values(), key=lambda s: s.id))
        if "rules" in state.changed or "switches" in state.changed:
            self._switches(room, state)

    def _switches(self, room: str, state: RoomState) -> None:
        """Each rule's switch state ({prefix}/{room}/{rule}/enabled): OFF while a person has it switched off."""
        channel = self.publisher.room(room)
        for spec in entity_specs(state.rules):
            channel.set_enabled(spec.id, spec.id not in state.rules_off)

    def status(self, status: Status) -> None:
        """The hub's switch and the Model problem sensor when they change; the retained status on a report."""
        node = self.publisher.node
        if self.hub and status.muted_all != self._muted_all:
            self._muted_all = status.muted_all
            node.set_muted(status.muted_all)
        failed = tuple(status.model_failed)
        if failed != self._failed:  # a room failed or recovered (the details of the others come along)
            self._failed = failed
            if status.multi_room:
                detail = "; ".join(f"{rid}: {d}" for rid, d in status.model_failed.items())
            else:
                detail = next(iter(status.model_failed.values()), "")
            node.set_model(not failed, detail, list(failed) if status.multi_room else None)
        if status.report:
            self.publisher.publish_status(dict(status.health))
