"""What people switch: commands from MQTT and the page (mute, rules on/off, reload, labels), and the switches, kept in state_dir.

Commands arrive on other threads (paho's, the web server's) and are only queued there; the main
loop applies them (`apply`). A mute survives a restart: a privacy switch that forgets itself is
no privacy switch. A whole home has a switch per room and one for every room (the node's). Each
rule of each room has its own switch too (`enabled`): off, it is not asked; kept the same way.
Labels (an alert right or wrong, a sound missed) go to the `Labeller`, carried out by the same loop.
"""

from __future__ import annotations

import collections
import json
import logging
import threading
from concurrent.futures import Future
from pathlib import Path
from typing import TYPE_CHECKING

from monitor.config import Config
from monitor.daemon.labelling import Labeller
from monitor.labels.requests import LabelRequest, Outcome, parse_label
from monitor.rooms import ActiveRoom

if TYPE_CHECKING:
    from monitor.daemon.status import StatusBoard

log = logging.getLogger(__name__)


class Controls:
    """The daemon's switches; `on_command` from any thread, everything else on the main thread."""

    def __init__(self, config: Config, state_dir: Path, rooms: dict[str, ActiveRoom]):
        self.config = config
        self.state_dir = state_dir
        self.rooms = rooms
        self.reload_requested = threading.Event()  # set by a command, SIGHUP or the page; the main loop reloads
        self._commands: collections.deque[tuple[str, str, str]] = collections.deque()  # (name, value, target)
        self.labels = Labeller(config, state_dir, rooms)  # also one of the daemon's sinks (it remembers the alerts)

    @property
    def home_mute_file(self) -> Path:
        return self.state_dir / "muted"

    def on_command(self, name: str, value: str, target: str) -> None:
        """From the MQTT or web thread: only queue; the main loop acts."""
        if name == "reload":
            self.reload_requested.set()
        elif name == "label":  # from MQTT: value is the checked JSON body, target `{room}/{rule}`
            room, _, rule = target.partition("/")
            request = parse_label(json.loads(value), room, rule, "mqtt")
            if isinstance(request, LabelRequest):
                self.labels.submit(request)  # the outcome is logged by the labeller
        else:
            self._commands.append((name, value, target))

    def label(self, request: LabelRequest) -> Future[Outcome]:
        """From the web thread: a label for the main loop; its outcome on the future."""
        return self.labels.submit(request)

    def home_muted(self) -> bool:
        """Whether the whole-home switch was left ON before the restart (a whole home only)."""
        return self.config.multi_room and load_mute(self.home_mute_file)

    def restore(self, room: ActiveRoom, everywhere: bool) -> None:
        """A new room's switches as they were left before the restart."""
        room.set_muted(own=load_mute(room.mute_file), everywhere=everywhere)
        off = load_rules_off(room.rules_off_file)
        for rule_id in off:
            room.switch_rule(rule_id, False)
        if off:
            log.info("%srule(s) switched off (as left before the restart): %s", self._where(room), ", ".join(sorted(off)))

    def apply(self, board: StatusBoard) -> None:
        """Carry out the queued commands (the main thread)."""
        while self._commands:
            self.command(*self._commands.popleft(), board=board)
        self.labels.apply()

    def command(self, name: str, value: str, target: str, *, board: StatusBoard) -> None:
        """A mute switch: a room's own, or (the node's, in a whole home) every room's; or a rule's switch."""
        if name == "enabled":
            self.switch_rule(target, value == "ON", board)
            return
        if name != "mute":
            return
        muted = value == "ON"
        everywhere = self.config.multi_room and target == self.config.node_id
        if everywhere:
            save_mute(self.home_mute_file, muted)
            log.info("all rooms muted" if muted else "whole-home mute off")
            for room in self.rooms.values():
                self.mute_room(room, board, everywhere=muted)
        elif target in self.rooms:
            room = self.rooms[target]
            save_mute(room.mute_file, muted)
            self.mute_room(room, board, own=muted)
        board.show(urgent=True)

    def switch_rule(self, target: str, on: bool, board: StatusBoard) -> None:
        """A rule's switch (`target`: `{room}/{rule}`), kept in the room's `rules-off` file."""
        room_id, _, rule_id = target.partition("/")
        room = self.rooms.get(room_id)
        rule = room.pipeline.rules.ruleset.get(rule_id) if room is not None else None
        if room is None or rule is None or not rule.enabled:
            log.warning("cannot switch rule %r of %r: %s", rule_id, room_id,
                        "no such room" if room is None else "no such rule in its rule file (or enabled: false there)")
            return
        changed, events = room.switch_rule(rule_id, on)
        save_rules_off(room.rules_off_file, room.pipeline.rules.switched_off)
        room.publish(events, None)  # the OFF of a rule that was ON (reason: disabled)
        room.announce("switches")  # said again even when it did not move: a command asked
        if changed:
            log.info("%srule %s switched %s", self._where(room), rule_id,
                     "on: asked again" if on else "off: not asked until switched on again")
        board.show(urgent=True)

    def _where(self, room: ActiveRoom) -> str:
        return f"{room.id}: " if self.config.multi_room else ""

    def mute_room(self, room: ActiveRoom, board: StatusBoard, own: bool | None = None,
                  everywhere: bool | None = None) -> None:
        changed = room.set_muted(own=own, everywhere=everywhere)
        room.announce("mute")  # the switch is said again even when it did not move: a command asked
        if not changed:
            return
        muted = room.pipeline.muted
        prefix = f"{room.id}: " if self.config.multi_room else ""
        log.info("%s%s", prefix, "muted: no questions asked, no audio kept" if muted else "unmuted: listening again")
        board.check_hearing(room)
        board.report()


def load_mute(path: Path) -> bool:
    """The switch as `save_mute` left it (off when nothing was kept)."""
    try:
        muted = path.read_text().strip() == "ON"
    except OSError:
        return False
    if muted:
        log.info("starting muted (as left before the restart)%s",
                 "" if path.name == "muted" else f": {path.name.removeprefix('muted-')}")
    return muted


def save_mute(path: Path, muted: bool) -> None:
    try:
        path.write_text("ON\n" if muted else "OFF\n")
    except OSError as exc:
        log.warning("cannot remember the mute state in %s (%s)", path, exc.strerror)


def load_rules_off(path: Path) -> set[str]:
    """The rules left switched off (ids, one a line; none when nothing was kept)."""
    try:
        return {line.strip() for line in path.read_text().splitlines() if line.strip()}
    except OSError:
        return set()


def save_rules_off(path: Path, off: frozenset[str]) -> None:
    try:
        path.write_text("".join(f"{rule_id}\n" for rule_id in sorted(off)))
    except OSError as exc:
        log.warning("cannot remember which rules are switched off in %s (%s)", path, exc.strerror)
