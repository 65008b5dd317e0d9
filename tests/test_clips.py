"""Evidence clips: what a clip holds, which events get one, retention, and the privacy switch in the daemon."""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from monitor.audio.ringbuffer import RingBuffer
from monitor.clips import ClipStore
from monitor.config import ClipSettings
from monitor.events import Event
from monitor.publish import Publisher
from monitor.publish.settings import MqttSettings
from tests.daemon_support import DaemonProcess, events_of, write_config

RATE = 16_000
QUANT = 1.0 / 32768  # clips are 16-bit PCM
CLIP_BYTES = 44 + 2 * RATE  # one second of 16-bit mono WAV


def _event(kind: str = "on", rule: str = "glass", ts: float = 1_790_000_000.0) -> Event:
    return Event(rule_id=rule, rule_name=rule.title(), kind=kind, ts=ts, window_start=ts - 2, window_end=ts)


def _ring(seconds: float, capacity: float, seed: int = 0) -> tuple[RingBuffer, np.ndarray]:
    """A ring that has been fed `seconds` of audio in 100 ms blocks; also returns everything fed."""
    audio = (np.random.default_rng(seed).uniform(-0.9, 0.9, int(seconds * RATE))).astype(np.float32)
    ring = RingBuffer(int(capacity * RATE), RATE)
    block = RATE // 10
    for i in range(0, len(audio), block):
        ring.write(audio[i:i + block], wall_time=1_790_000_000.0 + (i + block) / RATE)
    return ring, audio


# ---------------------------------------------------------------------------- saving


def test_clip_is_the_window_plus_pre_roll_from_the_ring(tmp_path):
    ring, fed = _ring(8, capacity=10)
    store = ClipStore(tmp_path / "clips", ClipSettings(pre_roll=2.0))
    event = _event()
    path = store.save(event, ring, 5 * RATE, 7 * RATE)
    assert path is not None and path.parent == tmp_path / "clips"
    assert path.name.endswith(f"_glass_{event.id[:8]}.wav") and path.name[:8].isdigit()
    audio, rate = sf.read(path, dtype="float32")
    assert rate == RATE and len(audio) == 4 * RATE
    expected = ring.read(3 * RATE, 7 * RATE)
    assert np.array_equal(expected, fed[3 * RATE:7 * RATE])
    assert np.max(np.abs(audio - expected)) <= QUANT
    assert sf.info(path).subtype == "PCM_16" and store.saved == 1
    assert list((tmp_path / "clips").iterdir()) == [path]  # nothing half-written left beside it


@pytest.mark.parametrize("what, fed, capacity, start, expected_first", [
    ("the pre-roll stops at what the ring still holds", 8, 4, 5, 4),
    ("the pre-roll stops at the first sample", 3, 10, 1, 0),
])
def test_pre_roll_is_cut_short_where_there_is_no_audio(tmp_path, what, fed, capacity, start, expected_first):
    ring, audio_fed = _ring(fed, capacity)
    store = ClipStore(tmp_path, ClipSettings(pre_roll=2.0))
    path = store.save(_event(), ring, start * RATE, (start + 1) * RATE)
    audio, _ = sf.read(path, dtype="float32")
    assert len(audio) == (start + 1 - expected_first) * RATE
    assert np.max(np.abs(audio - audio_fed[expected_first * RATE:(start + 1) * RATE])) <= QUANT


def _feed(ring: RingBuffer, seconds: float, seed: int, muted: bool = False) -> np.ndarray:
    audio = (np.random.default_rng(seed).uniform(-0.9, 0.9, int(seconds * RATE))).astype(np.float32)
    ring.set_muted(muted)
    for i in range(0, len(audio), RATE // 10):
        ring.write(audio[i:i + RATE // 10])
    ring.set_muted(False)
    return audio


def test_the_post_roll_is_added_once_the_room_has_heard_it(tmp_path):
    ring, fed = _ring(8, capacity=20)
    store = ClipStore(tmp_path, ClipSettings(pre_roll=2.0, post_roll=1.5))
    path = store.save(_event(), ring, 5 * RATE, 7 * RATE)  # the window ends 1 s before the newest sample
    assert len(sf.read(path)[0]) == 4 * RATE  # written at once: the alarm does not wait for the post-roll
    assert store.window_in(path) == (2.0, 4.0)
    assert store.complete(ring, muted=False) == 0 and len(sf.read(path)[0]) == 4 * RATE  # 1 of 1.5 s heard
    fed = np.concatenate([fed, _feed(ring, 1.0, seed=1)])
    assert store.complete(ring, muted=False) == 1 and store.completed == 1
    audio, _ = sf.read(path, dtype="float32")
    assert len(audio) == int(5.5 * RATE) and np.max(np.abs(audio - fed[3 * RATE:int(8.5 * RATE)])) <= QUANT
    assert store.window_in(path) == (2.0, 4.0)  # the window's place in the clip is where it was
    assert store.complete(ring, muted=False) == 0  # done once
    assert sorted(tmp_path.iterdir()) == [path]  # written aside and renamed: nothing half-written beside it


@pytest.mark.parametrize("what", ["muted during the post-roll", "muted now", "the ring lapped it", "pruned"])
def test_a_clip_whose_post_roll_cannot_be_kept_stays_as_first_written(tmp_path, what):
    ring, _ = _ring(8, capacity=6 if what == "the ring lapped it" else 20)
    store = ClipStore(tmp_path, ClipSettings(pre_roll=2.0, post_roll=1.0))
    path = store.save(_event(), ring, 5 * RATE, 7 * RATE)
    first = sf.read(path, dtype="float32")[0]
    _feed(ring, 0.5, seed=2)
    _feed(ring, 0.5 if what != "the ring lapped it" else 5.0, seed=3, muted=what == "muted during the post-roll")
    if what == "pruned":
        path.unlink()
    assert store.complete(ring, muted=what == "muted now") == 0
    assert what == "pruned" and not path.exists() or np.array_equal(sf.read(path, dtype="float32")[0], first)
    _feed(ring, 2.0, seed=4)
    assert store.complete(ring, muted=False) == 0  # given up on, not retried with what came later


WANTS = [
    ("an ON event", {}, "on", "yes_no", True),
    ("an OFF event", {}, "off", "yes_no", False),
    ("clips switched off", {"enabled": False}, "on", "yes_no", False),
    ("a transcript, by default", {}, "text", "text", False),
    ("a match, by default", {}, "match", "match", False),
    ("a transcript when text_rules is on", {"text_rules": True}, "text", "text", True),
    ("a match when text_rules is on", {"text_rules": True}, "match", "match", True),
    ("a transcript when clips are off", {"text_rules": True, "enabled": False}, "text", "text", False),
]


@pytest.mark.parametrize("what, settings, kind, rule_kind, wanted", WANTS, ids=[w[0] for w in WANTS])
def test_which_events_get_a_clip(tmp_path, what, settings, kind, rule_kind, wanted):
    assert ClipStore(tmp_path, ClipSettings(**settings)).wants(_event(kind), rule_kind) is wanted


def test_an_unwritable_folder_loses_no_event_and_logs_once(tmp_path, caplog):
    (tmp_path / "state").write_text("a file where the folder should be")
    ring, _ = _ring(4, 10)
    store = ClipStore(tmp_path / "state" / "clips", ClipSettings())
    with caplog.at_level(logging.ERROR, logger="monitor.clips"):
        assert store.save(_event(), ring, 2 * RATE, 4 * RATE) is None
        assert store.save(_event(), ring, 2 * RATE, 4 * RATE) is None
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "check that state_dir is writable" in errors[0].getMessage()
    assert store.saved == 0


# ---------------------------------------------------------------------------- retention

NOW = 1_790_000_000.0


def _clips(folder: Path, ages: list[float]) -> list[Path]:
    """One-second clips whose modification times are `ages` seconds before NOW (oldest first in the list)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, age in enumerate(ages):
        path = folder / f"clip{i}.wav"
        sf.write(path, np.zeros(RATE, dtype=np.float32), RATE, subtype="PCM_16")
        os.utime(path, (NOW - age, NOW - age))
        paths.append(path)
    assert all(p.stat().st_size == CLIP_BYTES for p in paths)
    return paths


def _left(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_retention_by_age_spares_protected_clips(tmp_path):
    c = _clips(tmp_path, [400, 300, 200, 100])
    store = ClipStore(tmp_path, ClipSettings(max_age=250), clock=lambda: NOW)
    assert store.prune(keep=[str(c[0])]) == [c[1]]
    assert _left(tmp_path) == ["clip0.wav", "clip2.wav", "clip3.wav"]
    assert store.prune() == [c[0]] and store.deleted == 2  # once delivered, it goes too


def test_retention_by_size_deletes_the_oldest_first(tmp_path):
    c = _clips(tmp_path, [500, 400, 300, 200, 100])
    (tmp_path / "crashed.wav.part").write_bytes(b"half a clip")
    settings = ClipSettings(max_total_mb=3.5 * CLIP_BYTES / (1024 * 1024))  # room for three of the five
    store = ClipStore(tmp_path, settings, clock=lambda: NOW)
    assert store.prune() == [c[0], c[1]]
    assert _left(tmp_path) == ["clip2.wav", "clip3.wav", "clip4.wav"]


def test_retention_by_size_skips_a_protected_oldest_clip(tmp_path):
    c = _clips(tmp_path, [500, 400, 300, 200, 100])
    settings = ClipSettings(max_total_mb=3.5 * CLIP_BYTES / (1024 * 1024))
    store = ClipStore(tmp_path, settings, clock=lambda: NOW)
    # the outbox may name the clip differently (relative to the cwd, with ..): the same file all the same
    keep = os.path.relpath(c[0], Path.cwd())
    assert store.prune(keep=[keep]) == [c[1], c[2]]
    assert _left(tmp_path) == ["clip0.wav", "clip3.wav", "clip4.wav"]


def test_clips_of_undelivered_events_survive_until_the_broker_has_them(broker, tmp_path):
    """The real publisher and its SQLite outbox decide what is protected."""
    clips = tmp_path / "state" / "clips"
    old = _clips(clips, [900, 800, 10])
    settings = MqttSettings(host=broker.host, port=broker.port, topic_prefix="am")
    publisher = Publisher(settings, "test_node", "Test", tmp_path / "state")
    store = ClipStore(clips, ClipSettings(max_age=60), clock=lambda: NOW)
    try:
        publisher.publish_event(_event().with_clip(str(old[0])))  # queued: the broker is not connected yet
        assert publisher.pending_clips() == {str(old[0])}
        assert store.prune(publisher.pending_clips()) == [old[1]]
        publisher.start()
        deadline = time.monotonic() + 20
        while publisher.outbox_depth and time.monotonic() < deadline:
            time.sleep(0.05)
        assert publisher.outbox_depth == 0, "the broker never acknowledged the event"
        assert publisher.pending_clips() == set()
        assert store.prune(publisher.pending_clips()) == [old[0]]
        assert _left(clips) == ["clip2.wav"]
    finally:
        publisher.stop()


# ---------------------------------------------------------------------------- the privacy switch


def _wait_after(sub, index: int, predicate, timeout: float = 30.0) -> tuple[int, tuple]:
    """The first message at or after position `index` that matches (older ones do not count)."""
    deadline = time.monotonic() + timeout
    while True:
        for i, message in enumerate(list(sub.messages)[index:], start=index):
            if predicate(*message):
                return i, message
        if time.monotonic() > deadline:
            seen = [(t, p[:120]) for t, p, _ in sub.messages[index:]][-15:]
            raise TimeoutError(f"no matching message after #{index} within {timeout}s; seen: {seen}")
        time.sleep(0.05)


def _info(state: str):
    return lambda t, p, r: t == "am/test_node/info" and json.loads(p)["state"] == state


def test_muted_daemon_asks_nothing_saves_nothing_and_stays_muted(vmic, broker, subscriber_factory, tiny_model_dir,
                                                                 tmp_path):
    noise = tmp_path / "noise.wav"  # 3 s of loud noise, then 4 s of silence: longer than a window
    rng = np.random.default_rng(3)
    sf.write(noise, np.concatenate([rng.standard_normal(3 * RATE) * 0.2, np.zeros(4 * RATE)]).astype(np.float32), RATE)
    scores = tmp_path / "scores.jsonl"
    config = write_config(tmp_path, tiny_model_dir, broker.port, extra={"audio.device": "pulse", "scores_log": str(scores)})
    clips = tmp_path / "state" / "clips"
    sub = subscriber_factory(broker, "am/#")
    mute = lambda value: sub.client.publish("am/test_node/set/mute", value, qos=1).wait_for_publish(5)  # noqa: E731
    daemon = DaemonProcess(config, env=vmic.env)
    try:
        daemon.wait_log("listening:", timeout=120)
        sub.wait_for(lambda t, p, r: t == "am/test_node/status" and p == b"online")
        n = len(sub.messages)
        mute(b"ON")
        _, muted = _wait_after(sub, n, _info("muted"))
        _wait_after(sub, n, lambda t, p, r: t == "am/test_node/mute" and p == b"ON")
        vmic.play(noise)  # heard by the capture, never asked about
        heard = [json.loads(line) for line in scores.read_text().splitlines()] if scores.exists() else []
        n = len(sub.messages)
        mute(b"OFF")
        _, listening = _wait_after(sub, n, _info("listening"))
        before, after = json.loads(muted[1]), json.loads(listening[1])
        # no window is cut from audio heard while muted; only those already in flight are answered
        assert after["windows"] - before["windows"] <= 2
        assert after["processed"] - before["processed"] <= 3
        assert all(r["dbfs"] < -45 for r in heard), "the noise played while muted reached the model"
        assert not events_of(sub.messages)
        assert not clips.exists() or not any(clips.iterdir())
        # the same sound, unmuted: ON, with a clip (so the silence above was the mute, not a deaf setup)
        vmic.play(noise)
        sub.wait_for(lambda t, p, r: t == "am/test_node/loud/state" and p == b"ON", timeout=15)
        (on,) = [e for e in events_of(sub.messages) if e["kind"] == "on"]
        assert Path(on["clip"]).parent == clips and Path(on["clip"]).exists()
        n = len(sub.messages)
        mute(b"ON")
        _wait_after(sub, n, _info("muted"))
    finally:
        code = daemon.stop()
    assert code == 0, daemon.output
    assert (tmp_path / "state" / "muted").read_text().strip() == "ON"
    # a restart keeps the privacy switch where it was left
    n, _ = _wait_after(sub, 0, lambda t, p, r: t == "am/test_node/status" and p == b"offline")
    daemon = DaemonProcess(config, env=vmic.env)
    try:
        daemon.wait_log("starting muted", timeout=120)
        online, _ = _wait_after(sub, n + 1, lambda t, p, r: t == "am/test_node/status" and p == b"online")
        _wait_after(sub, online, _info("muted"))
        _wait_after(sub, online, lambda t, p, r: t == "am/test_node/mute" and p == b"ON")
    finally:
        assert daemon.stop() == 0, daemon.output
    assert "Traceback" not in daemon.output
