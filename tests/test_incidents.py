"""One incident per sound, and what was heard in words: a whole home in one daemon, a real broker, file sources.

The daemon runs in this process so that a test controls the model's yes/no answer (equal scores
everywhere: the level decides which room an incident is attributed to) and can slow its text
answers down; the text itself comes from the tiny real-architecture model through the path every
text question takes.
"""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import yaml

from monitor.config import load_config
from monitor.daemon import Daemon
from monitor.engine.api import Question, Request, Score, TextTask
from monitor.engine.local.engine import Engine
from monitor.engine.settings import ModelSettings
from monitor.engine.worker import EngineWorker
from monitor.incidents.grouping import Grouper, Member
from monitor.systemd import Notifier
from monitor.testing.signals import make_window, noise

RATE = 16_000

# ON while a window is audible (the gate decides; the test's engine says 0.9 to everything), once per room
FALL_RULES = """\
rules:
  - id: fall
    name: Fall detection
    ask: Did someone fall? Answer yes or no.
    threshold: 0.5
    release: 0.5
    hold: 0s
    cooldown: 60s
    gate: {min_dbfs: -50}
    device_class: safety
"""


class EqualScores(Engine):
    """The real tiny engine, whose yes/no answers are all 0.9 (so the level decides attribution); text
    questions take `text_delay` seconds more, and every call is recorded."""

    text_delay = 0.0
    calls: list[dict] = []
    worker = None  # set by a test: the daemon's engine thread, to see what waits when a description is taken

    def answer(self, requests):
        started = time.time()
        texts = any(r.texts for r in requests)
        waiting = EqualScores.worker.stats.pending if EqualScores.worker is not None else None
        if texts:
            time.sleep(self.text_delay)
        results = [dataclasses.replace(r, scores={k: Score(0.9, 0.5) for k in r.scores})
                   for r in super().answer(requests)]
        EqualScores.calls.append({"started": started, "ended": time.time(), "texts": texts, "waiting": waiting,
                                  "windows": [(q.source, q.window.seq, q.window.t_end) for q in requests]})
        return results


def _burst_file(path: Path, seconds: float, bursts: list[tuple[float, float]], level: float) -> Path:
    """Near silence (not digital silence) with noise bursts of `level` RMS over [start, end) seconds."""
    rng = np.random.default_rng(5)
    audio = (rng.standard_normal(int(seconds * RATE)) * 1e-4).astype(np.float32)
    for start, end in bursts:
        a, b = int(start * RATE), int(end * RATE)
        audio[a:b] = (rng.standard_normal(b - a) * level).astype(np.float32)
    sf.write(path, audio, RATE)
    return path


def _home(tmp_path: Path, model: Path, broker_port: int, files: dict[str, Path], windows: dict,
          extra: dict | None = None) -> Path:
    (tmp_path / "rules.yaml").write_text(FALL_RULES)
    config = {
        "node_id": "home",
        "name": "Home",
        "sources": {room: {"name": room.title(), "audio": {"source": f"file:{f}", "realtime": True,
                                                           "buffer_seconds": 30}} for room, f in files.items()},
        "windows": windows,
        "model": {"path": str(model), "device": "cpu"},
        "mqtt": {"host": "127.0.0.1", "port": broker_port, "topic_prefix": "am", "birth_timeout": "1s"},
        "rules": str(tmp_path / "rules.yaml"),
        "state_dir": str(tmp_path / "state"),
        "metrics": {"enabled": False},
        "web": {"port": 0, "public_url": "https://home.example.net/audio/"},
        "clips": {"pre_roll": "1s"},
        "describe": {"max_new_tokens": 8, "max_lag": "30s"},
        "stop_timeout": "5s",
        "log": {"level": "info"},
        **(extra or {}),
    }
    path = tmp_path / "home.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _run(daemon: Daemon) -> tuple[threading.Thread, list[int]]:
    codes: list[int] = []
    thread = threading.Thread(target=lambda: codes.append(daemon.run()), daemon=True)
    thread.start()
    return thread, codes


def _json(sub, topic: str) -> list[dict]:
    return [json.loads(p) for t, p, _ in list(sub.messages) if t == topic]


def test_one_sound_in_two_rooms_is_one_incident_named_after_the_louder_room_then_described(
        broker, subscriber_factory, tiny_model_dir, tmp_path):
    files = {"kitchen": _burst_file(tmp_path / "kitchen.wav", 14, [(4, 6.5)], level=0.02),  # heard faintly
             "hall": _burst_file(tmp_path / "hall.wav", 14, [(4, 6.5)], level=0.3)}  # where it happened
    config = load_config(_home(tmp_path, tiny_model_dir, broker.port, files, {"length": "2s", "hop": "1s"}))
    sub = subscriber_factory(broker, ["am/#", "homeassistant/#"])
    EqualScores.text_delay, EqualScores.calls, EqualScores.worker = 0.0, [], None
    daemon = Daemon(config, notifier=Notifier(), engine_factory=EqualScores.load)
    thread, codes = _run(daemon)
    try:
        # Home Assistant: the incident event entity is on the daemon's own device; each room's event entity
        # takes the `described` events of a rule that describes
        hub = json.loads(sub.wait_for(lambda t, p, r: t == "homeassistant/device/home/config", timeout=60)[1])
        entity = hub["cmps"]["fall_incident"]
        assert entity["p"] == "event" and entity["name"] == "Fall detection incident"
        assert entity["state_topic"] == "am/home/fall/incident" and entity["event_types"] == ["incident"]
        assert entity["availability_topic"] == "am/home/status"
        assert "fall_incident" not in json.loads(sub.wait_for(
            lambda t, p, r: t == "homeassistant/device/kitchen/config")[1])["cmps"]
        room = json.loads(sub.wait_for(lambda t, p, r: t == "homeassistant/device/hall/config")[1])
        assert room["cmps"]["fall_event"]["event_types"] == ["on", "off", "described"]

        first = json.loads(sub.wait_for(lambda t, p, r: t == "am/home/fall/incident", timeout=60)[1])
        update = json.loads(sub.wait_for(lambda t, p, r: t == "am/home/fall/incident" and b'"update": true' in p,
                                         timeout=60)[1])
        described = [e for e in _json(sub, "am/hall/fall/event") if e["kind"] == "described"]
        thread.join(60)  # the files end: the daemon stops by itself
    finally:
        daemon.request_stop()
        thread.join(30)
    assert codes == [0]
    # one message per incident, then its update: the louder room named, both listed, the clip linked
    assert first["update"] is False and first["event_type"] == "incident"
    assert (first["rule"], first["rule_name"], first["room"], first["room_name"]) == (
        "fall", "Fall detection", "hall", "Hall")
    assert [r["room"] for r in first["rooms"]] == ["hall", "kitchen"]
    assert first["rooms"][0]["level"] > first["rooms"][1]["level"] + 10
    assert first["score"] == 0.9 and first["level"] == first["rooms"][0]["level"]
    assert first["time"].endswith("+00:00") and first["description"] is None
    clip = Path(first["clip"])
    assert clip.parent == tmp_path / "state" / "clips" / "hall" and clip.is_file()
    assert first["clip_url"] == f"https://home.example.net/audio/clips/hall/{clip.name}"
    assert update["incident"] == first["incident"] and update["update"] is True
    assert isinstance(update["description"], str) and update["description"].strip()
    assert {k: v for k, v in update.items() if k not in ("description", "update")} == \
        {k: v for k, v in first.items() if k not in ("description", "update")}
    assert len(_json(sub, "am/home/fall/incident")) == 2  # no more than that
    # the per-room ON events share the incident's id; the described room's event topic has the text
    ons = {room: [e for e in _json(sub, f"am/{room}/fall/event") if e["kind"] == "on"] for room in files}
    assert [len(v) for v in ons.values()] == [1, 1]
    assert {e["incident"] for v in ons.values() for e in v} == {first["incident"]}
    assert {r["event"] for r in first["rooms"]} == {v[0]["id"] for v in ons.values()}
    assert [(d["incident"], d["text"]) for d in described] == [(first["incident"], update["description"])]
    # kept with the clips: the incident as it was last sent, beside each room's clip
    for r in first["rooms"]:
        event = next(e for e in ons[r["room"]])
        note = json.loads(Path(event["clip"]).with_suffix(".json").read_text())
        assert note["incident"] == first["incident"] and note["description"] == update["description"]
        assert note["event"] == event["id"]
    # the page: the description beside each room's ON event of the incident
    snapshot = json.loads(daemon.page.hub.snapshot_json())
    for view in snapshot["rooms"]:
        (on,) = [e for e in view["events"] if e["kind"] == "on"]
        assert on["incident"] == first["incident"] and on["description"] == update["description"]
        assert all(e["kind"] != "described" for e in view["events"])
    # asked once: about the louder room's window, after the windows that turned the rule ON
    asked = [c for c in EqualScores.calls if c["texts"]]
    assert len(asked) == 1 and asked[0]["windows"][0][0] == "hall"


def test_a_slow_description_waits_for_every_room_s_windows_and_delays_none_past_its_inbox(
        broker, subscriber_factory, tiny_model_dir, tmp_path):
    """A description that takes 2 s of the engine: it is taken only when no window of any room waits, and
    the windows cut meanwhile wait for it alone: none skipped, none answered late beyond it."""
    files = {room: _burst_file(tmp_path / f"{room}.wav", 22, [(4, 6), (12, 14)], level=level)
             for room, level in (("kitchen", 0.3), ("hall", 0.05), ("porch", 0.02))}
    config = load_config(_home(tmp_path, tiny_model_dir, broker.port, files, {"length": "2s", "hop": "1.5s"},
                               extra={"incidents": {"window": "3s"}}))
    (tmp_path / "rules.yaml").write_text(FALL_RULES.replace("cooldown: 60s", "cooldown: 6s"))
    sub = subscriber_factory(broker, ["am/#"])
    EqualScores.text_delay, EqualScores.calls, EqualScores.worker = 2.0, [], None
    daemon = Daemon(config, notifier=Notifier(), engine_factory=EqualScores.load)
    thread, codes = _run(daemon)
    try:
        assert daemon.ready.wait(90)
        EqualScores.worker = daemon.worker
        thread.join(90)  # the files end: the daemon stops by itself
    finally:
        daemon.request_stop()
        thread.join(30)
    assert codes == [0]
    calls = EqualScores.calls
    asked = [c for c in calls if c["texts"]]
    assert len(asked) == 2, [(c["texts"], c["windows"]) for c in calls]  # one per incident, in three rooms
    for c in asked:
        assert len(c["windows"]) == 1 and c["windows"][0][0] == "kitchen"  # the loudest room's window
        assert c["waiting"] == 0, "a description was taken while a room's window waited"
    # every room's windows were all answered: none skipped while a description held the engine
    for room in daemon.rooms.values():
        p = room.pipeline
        assert p.skipped == 0 and p.stats.processed == p.stats.windows > 10, (room.id, p.skipped, p.stats)
    # in time: a window waits at most for the one description in flight (2 s) and the batch before it
    windows = [(end, c["ended"]) for c in calls if not c["texts"] for _src, _seq, end in c["windows"]]
    late = max(answered - end for end, answered in windows)
    assert late < EqualScores.text_delay + 3.0, late
    # both incidents were described, and said so on the incident topic
    incidents = _json(sub, "am/home/fall/incident")
    assert len({i["incident"] for i in incidents}) == 2
    assert all(i["room"] == "kitchen" and len(i["rooms"]) == 3 for i in incidents)
    assert sum(1 for i in incidents if i["update"] and i["description"]) == 2
    assert daemon.status()["descriptions"] == {"answered": 2, "dropped": 0}


# ---------------------------------------------------------------------------- the low-priority lane


class HeldEngine(Engine):
    """The real tiny engine, one request per call, each held at a gate until the test opens it; records the order."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.max_batch = 1
        self.gate = threading.Semaphore(0)
        self.started = threading.Semaphore(0)
        self.order: list[str] = []

    def answer(self, requests):
        (r,) = requests
        self.order.append(f"{r.source}:{'describe' if r.texts else r.window.seq}")
        self.started.release()
        assert self.gate.acquire(timeout=60), "the test never let it through"
        return super().answer(requests)


def _window(source: str, seq: int) -> Request:
    return Request(make_window(noise(1.0, seed=seq), seq=seq, start=seq * RATE),
                   (Question("fall", "Did someone fall? Answer yes or no."),), source=source)


def _description(source: str) -> Request:
    window = make_window(noise(1.0, seed=99), seq=99, start=99 * RATE)
    return Request(window, texts=(TextTask("fall", "Describe it.", window.start, window.end, max_new_tokens=3),),
                   source=source)


def test_the_low_lane_goes_after_every_room_s_waiting_windows_and_drops_what_waited_too_long(tiny_model_dir, caplog):
    loaded = Engine.load(ModelSettings(path=tiny_model_dir))
    made: list[HeldEngine] = []
    answers: list = []
    worker = EngineWorker(loaded.settings, lambda r: answers.append(r), inbox_size=2, low_max_wait=2.0,
                          engine_factory=lambda s: made.append(HeldEngine(loaded.model, loaded.processor, s,
                                                                          loaded.placement)) or made[-1]).start()
    try:
        assert worker.wait_ready(60)
        engine = made[0]
        described: list = []
        # the engine is busy with the kitchen's window; meanwhile a description and windows of both rooms come
        assert worker.submit(_window("kitchen", 1), drop_oldest=True)
        assert engine.started.acquire(timeout=30)
        assert worker.submit_low("i1", _description("kitchen"), described.append)
        assert worker.submit(_window("hall", 2), drop_oldest=True)
        assert worker.submit(_window("kitchen", 3), drop_oldest=True)
        for _ in range(3):  # the windows first, whatever came first
            engine.gate.release()
            assert engine.started.acquire(timeout=30)
        assert engine.order == ["kitchen:1", "hall:2", "kitchen:3", "kitchen:describe"]
        engine.gate.release()
        wait = time.monotonic() + 30
        while not described and time.monotonic() < wait:
            time.sleep(0.02)
        assert len(described) == 1 and described[0].source == "kitchen" and described[0].texts
        assert [r.window.seq for r in answers] == [1, 2, 3]  # a description never reaches the rooms' windows
        # a description that waits longer than low_max_wait behind live windows is dropped, counted, logged once
        assert worker.submit(_window("hall", 4), drop_oldest=True)
        assert engine.started.acquire(timeout=30)
        assert worker.submit_low("i2", _description("hall"), described.append)
        assert worker.submit_low("i3", _description("hall"), described.append)
        time.sleep(2.5)
        with caplog.at_level("DEBUG", logger="monitor.engine.worker"):
            engine.gate.release()
            wait = time.monotonic() + 30
            while worker.stats.low_dropped < 2 and time.monotonic() < wait:
                time.sleep(0.02)
        assert worker.stats.low_dropped == 2 and worker.stats.low_answered == 1 and len(described) == 1
        dropped = [r for r in caplog.records if "was dropped" in r.getMessage()]
        assert [r.levelname for r in dropped] == ["INFO", "DEBUG"]
        assert worker.wait_idle(10)
    finally:
        for _ in range(5):
            made[0].gate.release() if made else None
        worker.stop(timeout=10)


# ---------------------------------------------------------------------------- the grouping, by numbers


def _member(room: str, ts: float, score: float | None = 0.9, level: float = -30.0) -> Member:
    return Member(room, room.title(), f"ev-{room}-{ts}", ts, score, level)


def test_grouping_joins_rooms_within_the_window_and_attributes_by_score_then_level():
    ids = iter(f"i{n}" for n in range(10))
    g = Grouper(5.0, new_id=lambda: next(ids))
    a, new = g.join("fall", "Fall", _member("kitchen", 100.0, 0.8, -20.0), now=0.0)
    assert new and a.id == "i0"
    # another room 3 s later: the same incident; a higher score wins over a louder level
    assert g.join("fall", "Fall", _member("hall", 103.0, 0.95, -40.0), now=3.0) == (a, False)
    assert a.attributed.room == "hall"
    # equal scores: the louder room
    assert g.join("fall", "Fall", _member("porch", 104.0, 0.95, -10.0), now=4.0) == (a, False)
    assert a.attributed.room == "porch"
    # the same room again: a new sound; another rule: its own incident; 6 s after the first: a new one
    assert g.join("fall", "Fall", _member("kitchen", 104.5), now=4.5)[0].id == "i1"
    assert g.join("smoke", "Smoke", _member("hall", 104.5), now=4.5)[0].id == "i2"
    assert g.join("fall", "Fall", _member("hall", 111.0), now=11.0)[0].id == "i3"


def test_an_incident_goes_out_once_every_room_that_could_join_has_or_when_its_window_passes():
    g = Grouper(5.0)
    inc, _ = g.join("fall", "Fall", _member("kitchen", 100.0), now=0.0)
    assert g.due(1.0, lambda rule: {"kitchen", "hall"}) == []  # the hall may still hear it
    assert g.due(5.0, lambda rule: {"kitchen", "hall"}) == [inc]  # the window passed
    assert g.due(1.0, lambda rule: {"kitchen"}) == [inc]  # a single room: at once
    assert inc.payload(None)["update"] is False and inc.payload(None)["clip_url"] is None
    g.mark_sent(inc)
    assert g.due(9.0, lambda rule: set()) == []
    g.describe(inc.id, "A thud and a cry.")
    (again,) = g.due(9.0, lambda rule: set())
    assert again.payload(None)["update"] is True and again.payload(None)["description"] == "A thud and a cry."
