"""Alarms go out when the outbox cannot store them: a full disk, a read-only disk, a damaged file.

The state_dir of these tests is a real, small tmpfs that the test fills to the last byte (or
remounts read-only), so SQLite meets the kernel's own ENOSPC / EROFS. Mounting needs root:
without it the tests are skipped (and fail under CI=true).
"""

from __future__ import annotations

import json
import logging
import re
import signal
import sqlite3
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from helpers.mqtt_clients import Recorder, first_occurrences, has_events, make_event, send, wait_for
from helpers.small_disk import SmallDisk, can_mount

from monitor.clips import ClipStore
from monitor.config import load_config
from monitor.daemon import Daemon
from monitor.publish.publisher import Publisher
from monitor.publish.room import RoomChannel
from monitor.publish.settings import MqttSettings
from tests.conftest import need
from tests.daemon_support import DaemonProcess, events_of, talk_file, write_config

NODE = "kitchen"
EVENT_TOPIC = f"audio-monitor/{NODE}/fall/event"
INFO_TOPIC = f"audio-monitor/{NODE}/info"
STATUS_TOPIC = f"audio-monitor/{NODE}/status"


@pytest.fixture
def small_disk() -> Iterator[Callable[..., SmallDisk]]:
    need(can_mount(), "root, to mount a small tmpfs as state_dir (run the tests as root, as `make test` does)")
    made: list[SmallDisk] = []

    def factory(path: Path, size: str = "512k") -> SmallDisk:
        try:
            disk = SmallDisk(path, size)
        except (subprocess.CalledProcessError, FileNotFoundError) as exc:
            need(False, f"permission to mount a tmpfs ({getattr(exc, 'stderr', '') or exc})")
        made.append(disk)
        return disk

    yield factory
    for disk in made:
        disk.close()


def infos(rec: Recorder) -> list[dict]:
    return [json.loads(p)["publisher"] for p in rec.payloads(INFO_TOPIC)]


def birth(broker, rec: Recorder) -> None:
    """Home Assistant's birth message: the publisher holds events after a connect until it comes.

    Sent once `rec` has seen the publisher's `online`, which it publishes after subscribing to
    the birth topic on the same connection: so it cannot miss the message.
    """
    rec.wait_until(lambda m: (STATUS_TOPIC, b"online") in [(t, p) for t, p, _ in m], what="the publisher's online")
    send(broker.host, broker.port, "homeassistant/status", "online")


# ---------------------------------------------------------------------------- the publisher


def test_publisher_sends_directly_while_the_disk_is_full_and_uses_the_outbox_again(
        broker, recorders, small_disk, tmp_path, caplog) -> None:
    caplog.set_level(logging.INFO, logger="monitor.publish")
    state = tmp_path / "state"
    disk = small_disk(state)
    rec = recorders(broker, [EVENT_TOPIC, INFO_TOPIC, STATUS_TOPIC])
    # a long hold: events go when the test says `online`, never by the clock
    pub = Publisher(MqttSettings(host=broker.host, port=broker.port, reconnect_min=0.2, reconnect_max=1,
                                 birth_timeout=60), NODE, "Kitchen", state)
    try:
        pub.start()
        birth(broker, rec)
        pub.publish_status({"note": "before"})
        pub.publish_event(make_event("stored"))
        rec.wait_until(has_events(["stored"], EVENT_TOPIC), what="the first event")
        wait_for(lambda: pub.outbox_depth == 0, what="its acknowledgement")

        assert disk.fill() > 0
        ids = [f"full-{i:02d}" for i in range(20)]
        routes = [pub.publish_event(make_event(i)) for i in ids]
        assert routes.count("direct") >= 19, routes  # SQLite may squeeze one more into a page it already has
        assert not pub.outbox_ok and "full" in (pub.outbox_problem or "")
        rec.wait_until(has_events(ids, EVENT_TOPIC), what="the events published while the disk is full")
        assert first_occurrences(rec.event_ids()) == ["stored", *ids]
        rec.wait_until(lambda m: any(i["outbox_ok"] is False for i in infos(rec)), what="outbox_ok false in the status")
        bad = [i for i in infos(rec) if i["outbox_ok"] is False][0]
        assert "full" in bad["outbox_problem"]
        wait_for(lambda: pub.direct_waiting == 0, what="the direct events' acknowledgements")
        assert pub.stats.direct_events == routes.count("direct")

        disk.free()
        broker.stop()
        wait_for(lambda: not pub.connected, what="the broker to be gone")
        assert pub.publish_event(make_event("after")) == "outbox"
        assert pub.outbox_ok and pub.outbox_depth == 1
        db = sqlite3.connect(state / "outbox.sqlite3")
        try:
            assert [r[0] for r in db.execute("SELECT ident FROM outbox")] == ["after"]
        finally:
            db.close()
        broker.start()
        late = recorders(broker, [EVENT_TOPIC, STATUS_TOPIC])
        birth(broker, late)
        late.wait_until(has_events(["after"], EVENT_TOPIC), what="the stored event")
        wait_for(lambda: pub.outbox_depth == 0, what="the outbox to empty")
    finally:
        pub.stop(timeout=2)
    said = [r.getMessage() for r in caplog.records]
    assert len([m for m in said if m.startswith("outbox cannot write")]) == 1, said  # once per change
    assert len([m for m in said if m.startswith("outbox writable again")]) == 1, said


def test_acknowledged_events_a_full_disk_cannot_delete_are_neither_counted_nor_sent_again(
        broker, recorders, small_disk, tmp_path, caplog) -> None:
    """In WAL mode a DELETE needs free space: acknowledged rows stay in the file while the disk is
    full. They leave the count at once, are deleted once there is room, and no event reaches the
    broker twice, not even after a restart."""
    caplog.set_level(logging.INFO, logger="monitor.publish")
    state = tmp_path / "state"
    disk = small_disk(state)
    settings = MqttSettings(host=broker.host, port=broker.port, reconnect_min=0.2, reconnect_max=1, birth_timeout=60)
    pub = Publisher(settings, NODE, "Kitchen", state)
    try:
        pub.start()
        wait_for(lambda: pub.connected, what="the connection")
        broker.stop()
        wait_for(lambda: not pub.connected, what="the broker to be gone")
        stored = [f"stored-{i:02d}" for i in range(30)]
        assert [pub.publish_event(make_event(i)) for i in stored] == ["outbox"] * 30
        assert disk.fill() > 0
        full = [f"full-{i:02d}" for i in range(10)]
        routes = [pub.publish_event(make_event(i)) for i in full]
        assert routes.count("direct") >= 9, routes  # SQLite may squeeze one more into a page it already has
        broker.start()
        hub = recorders(broker, [EVENT_TOPIC, STATUS_TOPIC])
        birth(broker, hub)
        hub.wait_until(has_events([*stored, *full], EVENT_TOPIC), what="the events kept while the broker was away")
        wait_for(lambda: pub.outbox_depth == 0 and pub.direct_waiting == 0, what="the outbox count to follow the acks")
        with sqlite3.connect(state / "outbox.sqlite3") as db:  # the disk is still full: rows the broker has stay
            assert db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0] > 0

        disk.free()

        def rows() -> int:
            with sqlite3.connect(state / "outbox.sqlite3") as db:
                return db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]

        wait_for(lambda: rows() == 0, what="the acknowledged rows to be deleted once there is room")
        after = [f"after-{i}" for i in range(5)]
        assert [pub.publish_event(make_event(i)) for i in after] == ["outbox"] * 5
        hub.wait_until(has_events(after, EVENT_TOPIC), what="the events stored after space returned")
        wait_for(lambda: pub.outbox_depth == 0, what="their acknowledgements")
    finally:
        pub.stop(timeout=2)
    # a restart sends nothing the broker already had
    again = Publisher(settings, NODE, "Kitchen", state)
    try:
        n = len(hub.payloads(STATUS_TOPIC))
        again.start()
        hub.wait_until(lambda m: b"online" in [p for t, p, _ in m if t == STATUS_TOPIC][n:], what="online after the restart")
        send(broker.host, broker.port, "homeassistant/status", "online")
        again.publish_event(make_event("restarted"))
        hub.wait_until(has_events(["restarted"], EVENT_TOPIC), what="an event after the restart")
    finally:
        again.stop(timeout=2)
    assert hub.event_ids() == [*stored, *full, *after, "restarted"]  # each once, in order
    said = [r.getMessage() for r in caplog.records]
    assert len([m for m in said if "cannot delete acknowledged events" in m]) == 1, said
    assert len([m for m in said if "deleted the acknowledged events kept" in m]) == 1, said
    assert not [m for m in said if "will be sent again" in m or "not yet acknowledged" in m], said


# ---------------------------------------------------------------------------- the daemon


# Windows of 1 s every 1 s and bursts on whole seconds: each burst is one loud window (ON) and one
# silent window (OFF), so the model, the slow part, answers as few windows as possible.
FAST = {"audio.realtime": False, "log.level": "info", "windows.length": "1s", "windows.hop": "1s"}


def _bursts(count: int) -> list[tuple[str, float]]:
    """`count` noise bursts of one second, each followed by a second of silence."""
    return [("noise", 1), ("silence", 1)] * count


def _logged_events(output: str) -> list[tuple[str, str, str]]:
    """(kind, id, route) of every `event loud ...` line, in order."""
    return re.findall(r"event loud (on|off) id=([0-9a-f]+) .*?via=(\w+)", output)


def test_daemon_with_a_full_state_dir_publishes_every_event_and_uses_the_outbox_once_there_is_room(
        broker, subscriber_factory, small_disk, tiny_model_dir, tmp_path) -> None:
    """The issue's acceptance: 50 events while state_dir is full all reach a subscriber, the daemon
    stays up, and events after space returns go through the outbox again."""
    disk = small_disk(tmp_path / "state")
    disk.fill()
    # 25 bursts (an ON and an OFF each), 10 s of silence to free the disk in, 3 more bursts
    path = talk_file(tmp_path, [("silence", 2), *_bursts(25), ("silence", 10), *_bursts(3)])
    config = write_config(tmp_path, tiny_model_dir, broker.port, source=f"file:{path}", extra=FAST)
    sub = subscriber_factory(broker, ["am/test_node/+/event", "am/test_node/info"])
    daemon = DaemonProcess(config)
    try:
        daemon.wait_log("outbox cannot write", timeout=120)
        deadline = time.monotonic() + 60
        while len(_logged_events(daemon.output)) < 50 and time.monotonic() < deadline:
            time.sleep(0.02)
        daemon.signal(signal.SIGSTOP)  # hold it inside the silence while the disk is freed
        disk.free()
        daemon.signal(signal.SIGCONT)
        assert daemon.wait(90) == 0, daemon.output
    finally:
        daemon.signal(signal.SIGCONT)
        daemon.kill()
    logged = _logged_events(daemon.output)
    direct = [(k, i) for k, i, via in logged if via == "direct"]
    stored = [(k, i) for k, i, via in logged if via == "outbox"]
    assert len(direct) >= 50 and len(stored) >= 2, logged
    assert [via for *_, via in logged] == ["direct"] * len(direct) + ["outbox"] * len(stored)  # no flapping
    assert [k for k, _ in direct[:50]] == ["on", "off"] * 25
    sub.wait_for(lambda t, p, r: t.endswith("/event") and json.loads(p)["id"] == logged[-1][1], timeout=20)
    delivered = [(e["kind"], e["id"]) for e in events_of(sub.messages)]
    assert first_occurrences(delivered) == [(k, i) for k, i, _ in logged]  # every event, in order
    out = daemon.output
    assert out.count("outbox cannot write") == 1 and out.count("outbox writable again") == 1, out
    assert "Traceback" not in out
    statuses = [json.loads(p)["publisher"] for t, p, _ in sub.messages if t == "am/test_node/info"]
    assert any(s["outbox_ok"] is False and s["outbox_problem"] for s in statuses), statuses
    # each ON event's incident (one room: sent after it, as the main loop turns) went the same way as the event,
    # but for one the daemon may have been held between the two: then it found the outbox writable again
    routes = re.findall(r"incident loud [0-9a-f]+: .* via=(\w+)", out)
    ons = [k for k, _ in direct if k == "on"]
    assert routes == ["direct"] * routes.count("direct") + ["outbox"] * routes.count("outbox"), routes
    assert len(ons) - 1 <= routes.count("direct") <= len(ons), (len(ons), routes)
    assert statuses[-1]["outbox_ok"] is True and statuses[-1]["direct_events"] == len(direct) + routes.count("direct")


def test_daemon_starts_with_a_damaged_outbox_it_cannot_move_aside(
        broker, subscriber_factory, small_disk, tiny_model_dir, tmp_path) -> None:
    """A corrupt outbox.sqlite3 on a read-only state_dir: the monitor starts and publishes directly."""
    disk = small_disk(tmp_path / "state")
    (tmp_path / "state" / "outbox.sqlite3").write_bytes(b"this is not a database " * 200)
    disk.read_only()
    path = talk_file(tmp_path, [("silence", 2), *_bursts(2)])
    config = write_config(tmp_path, tiny_model_dir, broker.port, source=f"file:{path}", extra=FAST)
    sub = subscriber_factory(broker, "am/test_node/+/event")
    daemon = DaemonProcess(config)
    try:
        assert daemon.wait(90) == 0, daemon.output
    finally:
        daemon.kill()
    logged = _logged_events(daemon.output)
    assert [(k, via) for k, _, via in logged] == [("on", "direct"), ("off", "direct")] * 2, daemon.output
    sub.wait_for(lambda t, p, r: json.loads(p)["id"] == logged[-1][1], timeout=20)
    assert first_occurrences([(e["kind"], e["id"]) for e in events_of(sub.messages)]) == [(k, i) for k, i, _ in logged]
    assert "cannot be moved aside" in daemon.output and "Traceback" not in daemon.output
    assert (tmp_path / "state" / "outbox.sqlite3").read_bytes().startswith(b"this is not a database")


def test_a_bug_in_an_event_or_a_window_is_logged_once_and_the_daemon_goes_on(
        broker, subscriber_factory, tiny_model_dir, tmp_path, monkeypatch, caplog) -> None:
    """A bug hit on every ON event (its clip) and on every window (the level): every event still
    goes out, each traceback is logged once, and the daemon ends normally."""
    caplog.set_level(logging.INFO, logger="monitor")

    def broken_clip(*_args) -> None:
        raise RuntimeError("clip bug")

    def broken_level(*_args) -> None:
        raise ZeroDivisionError("level bug")

    monkeypatch.setattr(ClipStore, "save", broken_clip)
    monkeypatch.setattr(RoomChannel, "publish_level", broken_level)
    path = talk_file(tmp_path, [("silence", 2), *_bursts(3)])
    config = load_config(write_config(tmp_path, tiny_model_dir, broker.port, source=f"file:{path}", extra=FAST))
    sub = subscriber_factory(broker, "am/test_node/+/event")
    codes: list[int] = []
    thread = threading.Thread(target=lambda: codes.append(Daemon(config).run()), daemon=True)  # no signal handlers
    thread.start()
    thread.join(90)
    assert codes == [0]
    logged = _logged_events("\n".join(r.getMessage() for r in caplog.records))
    assert [k for k, _, _ in logged] == ["on", "off"] * 3
    sub.wait_for(lambda t, p, r: json.loads(p)["id"] == logged[-1][1], timeout=20)
    assert first_occurrences([(e["kind"], e["id"]) for e in events_of(sub.messages)]) == [(k, i) for k, i, _ in logged]
    full = [r for r in caplog.records if r.exc_info]
    assert sorted(str(r.exc_info[1]) for r in full) == ["clip bug", "level bug"], [r.getMessage() for r in full]
