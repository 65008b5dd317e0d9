"""Fail-safe 2: mute is private. Nothing captured while muted reaches the model, a clip or the logs.

Including the first windows after unmute (which used to cover up to a window of muted audio) and
clips whose pre-roll reaches back into the mute. Speech is played into a real (virtual) microphone
while muted and compared, as audio, with everything the model was asked about and every clip.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

from monitor.audio.ringbuffer import RingBuffer
from monitor.audio.sources import MicSource
from monitor.clips import ClipStore
from monitor.config import load_config
from monitor.engine.local.engine import Engine
from monitor.pipeline import Pipeline
from monitor.rules import load_rules
from tests.conftest import ncc, speech_wav
from tests.daemon_support import DaemonProcess, events_of, write_config

RATE = 16_000
SAID = "This is private. Nobody may hear these words while the microphone is muted."
HEARD = 0.5  # normalised cross-correlation above which a recording holds the speech


class RecordingEngine:
    """The real engine, plus a copy of every window's audio it is asked about."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self.asked: list[tuple[int, int, np.ndarray]] = []

    def answer(self, requests: Any) -> Any:
        for request in requests:
            w = request.window
            self.asked.append((w.start, w.end, w.audio.copy()))
        return self.engine.answer(requests)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.engine, name)


LOUD_CLIP_RULES = """\
rules:
  - id: loud
    ask: Does this recording contain any sound at all? Answer yes or no.
    threshold: 0.0
    release: 0.0
    gate: {min_dbfs: -45}
"""


def _noise(path: Path, seconds: float) -> Path:
    rng = np.random.default_rng(9)
    sf.write(path, (rng.standard_normal(int(seconds * RATE)) * 0.2).astype(np.float32), RATE)
    return path


def test_speech_while_muted_reaches_no_request_and_no_clip(vmic, tiny_model_dir, tmp_path):
    speech_file = speech_wav(tmp_path / "private.wav", SAID)
    speech = sf.read(speech_file, dtype="float32")[0]
    config = load_config(write_config(tmp_path, tiny_model_dir, 1, rules=LOUD_CLIP_RULES,
                                      extra={"audio.device": "pulse", "clips.pre_roll": "20s",
                                             "audio.buffer_seconds": 40}))
    ring = RingBuffer(int(config.audio.buffer_seconds * RATE), RATE)
    recorder: list[RecordingEngine] = []

    def factory(settings: Any) -> RecordingEngine:
        recorder.append(RecordingEngine(Engine.load(settings)))
        return recorder[0]

    pipeline = Pipeline(config, load_rules(config.rules), source=MicSource(ring, device="pulse"), engine_factory=factory)
    clips = ClipStore(tmp_path / "clips", config.clips)
    saved: list[Path] = []
    stop = threading.Event()

    def consume() -> None:  # what the daemon's main loop does with each answer
        while not stop.is_set():
            result = pipeline.next_result(0.1)
            if result is None:
                continue
            for event in pipeline.process(result):
                if event.kind == "on":
                    w = result.window
                    path = clips.save(event, ring, w.start, w.end)
                    assert path is not None
                    saved.append(path)

    assert pipeline.load_model(120) is None
    pipeline.start_audio()
    consumer = threading.Thread(target=consume, daemon=True)
    consumer.start()
    try:
        assert ring.wait_for(2 * RATE, 10)
        pipeline.set_muted(True)
        assert pipeline.check_hearing()[0] and pipeline.hearing.reason == "muted"
        time.sleep(0.3)
        muted_at = ring.written
        vmic.play(speech_file)
        time.sleep(0.3)
        pipeline.set_muted(False)
        unmuted_at = ring.written
        pipeline.check_hearing()
        vmic.play(_noise(tmp_path / "noise.wav", 2.0))  # turns the rule ON: a clip with 20 s of pre-roll
        deadline = time.monotonic() + 15
        while not saved and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(1.0)
    finally:
        stop.set()
        consumer.join(5)
        pipeline.stop()
    asked = recorder[0].asked
    assert saved, "the noise after unmute should have turned the rule ON"
    # no window the model heard overlaps the mute, and none holds the speech
    after = [(s, e) for s, e, _ in asked if e > muted_at]
    assert after and all(s >= unmuted_at - RATE // 2 for s, e in after), (muted_at, unmuted_at, after[:3])
    assert max(ncc(audio, speech)[0] for *_, audio in asked) < HEARD
    # the first window after unmute starts where listening resumed
    first = min(s for s, e in after)
    assert first >= ring.private_end - 1 and first - unmuted_at < RATE
    # the clip's pre-roll stops at the unmute, and holds nothing of the speech
    for path in saved:
        clip = sf.read(path, dtype="float32")[0]
        assert len(clip) < 12 * RATE, "the pre-roll reached back into the mute"
        assert ncc(clip, speech)[0] < HEARD


def test_daemon_muted_by_mqtt_never_asks_about_or_saves_the_speech(vmic, broker, subscriber_factory, tiny_model_dir,
                                                                  tmp_path):
    speech_file = speech_wav(tmp_path / "private.wav", SAID)
    speech = sf.read(speech_file, dtype="float32")[0]
    scores = tmp_path / "scores.jsonl"
    config = write_config(tmp_path, tiny_model_dir, broker.port, rules=LOUD_CLIP_RULES,
                          extra={"audio.device": "pulse", "clips.pre_roll": "20s", "audio.buffer_seconds": 40,
                                 "scores_log": str(scores), "mqtt.level": {"enabled": True, "interval": 0}})
    sub = subscriber_factory(broker, "am/#")
    command = lambda value: sub.client.publish("am/test_node/set/mute", value, qos=1).wait_for_publish(5)  # noqa: E731
    daemon = DaemonProcess(config, env=vmic.env)
    try:
        daemon.wait_log("listening:", timeout=120)
        sub.wait_for(lambda t, p, r: t == "am/test_node/status" and p == b"online")
        command(b"ON")
        daemon.wait_log("muted: no questions asked", timeout=10)
        time.sleep(0.5)
        vmic.play(speech_file)
        time.sleep(0.3)
        command(b"OFF")
        daemon.wait_log("unmuted", timeout=10)
        time.sleep(4)  # the windows right after unmute: they used to hold the speech and fire the rule
        assert not events_of(sub.messages), "the speech played while muted was heard after unmute"
        before_noise, noise_wall = len(sub.messages), time.time()
        vmic.play(_noise(tmp_path / "noise.wav", 2.0))
        sub.wait_for(lambda t, p, r: t == "am/test_node/loud/state" and p == b"ON", timeout=15)
        (on,) = [e for e in events_of(sub.messages) if e["kind"] == "on"]
        clip = sf.read(on["clip"], dtype="float32")[0]
        assert ncc(clip, speech)[0] < HEARD
        assert len(clip) < 14 * RATE, "the clip's pre-roll reached back into the mute"
    finally:
        code = daemon.stop()
        print(daemon.output)  # shown when the test fails
    assert code == 0, daemon.output
    # neither the score log nor the level topic heard anything as loud as the speech before the noise
    records = [json.loads(line) for line in scores.read_text().splitlines()]
    assert any(r["dbfs"] > -45 for r in records)  # the noise
    assert all(r["t_end"] > noise_wall - 0.5 for r in records if r["dbfs"] > -45)
    levels = [float(p) for t, p, _ in sub.messages[:before_noise] if t == "am/test_node/level"]
    assert levels and max(levels) < -45
