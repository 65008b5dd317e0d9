"""The daemon in-process, where a test must reach inside: a hung engine, a slow engine."""

from __future__ import annotations

import threading
import time
import tracemalloc

import numpy as np
import soundfile as sf

from monitor.audio.ringbuffer import RingBuffer
from monitor.audio.sources import FileSource, MicSource
from monitor.config import MODEL_RATE, load_config
from monitor.daemon import Daemon
from monitor.engine.local.engine import Engine
from monitor.systemd import Notifier
from tests.daemon_support import NotifySocket, write_config


class HangableEngine(Engine):
    """The real engine, which can be made to hang inside a request (a stuck CUDA call, say)."""

    hang = threading.Event()
    release = threading.Event()
    hanging = threading.Event()

    def answer(self, requests):
        if self.hang.is_set():
            self.hanging.set()
            self.release.wait(60)
        return super().answer(requests)


class SlowEngine(Engine):
    """The real engine, made `delay` seconds slower per window (3x slower than real time below)."""

    delay = 3.0

    def answer(self, requests):
        time.sleep(self.delay * len(requests))
        return super().answer(requests)


def _run_in_thread(daemon: Daemon) -> tuple[threading.Thread, list[int]]:
    codes: list[int] = []
    thread = threading.Thread(target=lambda: codes.append(daemon.run()), daemon=True)
    thread.start()
    return thread, codes


def test_ready_then_watchdog_then_silence_when_the_engine_hangs(broker, tiny_model_dir, tmp_path):
    audio = tmp_path / "noise.wav"
    sf.write(audio, (np.random.default_rng(0).standard_normal(120 * MODEL_RATE) * 0.05).astype(np.float32), MODEL_RATE)
    config = load_config(write_config(tmp_path, tiny_model_dir, broker.port, source=f"file:{audio}",
                                      extra={"stop_timeout": "2s", "log.level": "info"}))
    sock = NotifySocket(tmp_path / "notify.sock")
    notifier = Notifier(sock.path)
    notifier.watchdog_seconds = 4.0  # as WatchdogSec=4s would set WATCHDOG_USEC
    HangableEngine.hang.clear()
    HangableEngine.release.clear()
    HangableEngine.hanging.clear()
    daemon = Daemon(config, notifier=notifier, engine_factory=HangableEngine.load)
    thread, codes = _run_in_thread(daemon)
    try:
        ready = sock.wait("READY=1", timeout=60)
        time.sleep(5)
        beats = [t for t in sock.seen("WATCHDOG=1") if t > ready]
        assert len(beats) >= 2, sock.messages
        HangableEngine.hang.set()
        assert HangableEngine.hanging.wait(10)
        stuck = time.monotonic()
        time.sleep(7)
        late = [t for t in sock.seen("WATCHDOG=1") if t > stuck + 2.5]  # one may already be on its way
        assert late == [], f"heartbeats continued while the engine hung: {len(late)}"
        assert any(m.startswith("STATUS=") for _, m in sock.messages)
    finally:
        daemon.request_stop()
        thread.join(20)
        HangableEngine.release.set()
        sock.close()
    # stopping did not wait for the hung window beyond stop_timeout
    assert not thread.is_alive() and codes == [0]
    assert sock.seen("STOPPING=1")


def test_backpressure_skips_windows_never_capture(vmic, broker, tiny_model_dir, tmp_path):
    """An engine 3x slower than real time: zero capture overflows, skipped windows counted, flat memory."""
    config = load_config(write_config(tmp_path, tiny_model_dir, broker.port,
                                      extra={"audio.device": "pulse", "stop_timeout": "5s", "log.level": "info"}))
    ring = RingBuffer(int(config.audio.buffer_seconds * MODEL_RATE), MODEL_RATE)
    source = MicSource(ring, device="pulse", sample_rate=16000)
    daemon = Daemon(config, source=source, engine_factory=SlowEngine.load)
    tracemalloc.start()
    thread, codes = _run_in_thread(daemon)
    try:
        assert daemon.ready.wait(90)
        time.sleep(8)
        early = tracemalloc.get_traced_memory()[0]
        skipped_early = daemon.pipeline.skipped
        time.sleep(14)
        late = tracemalloc.get_traced_memory()[0]
        pipeline = daemon.pipeline
        status = daemon.status()
    finally:
        daemon.request_stop()
        thread.join(30)
        tracemalloc.stop()
    assert codes == [0]
    assert source.stats.overflows == 0 and source.stats.lost_seconds == 0
    # ~22 windows were cut (hop 1 s); the engine answered about one in three, the rest were skipped
    assert pipeline.stats.windows >= 18
    assert pipeline.skipped > skipped_early > 0
    assert pipeline.stats.processed + pipeline.skipped + 3 >= pipeline.stats.windows
    assert 0 < status["skipped"] <= pipeline.skipped and status["lag_s"] is not None
    # the lag stays bounded by the inbox (2 windows) plus the window in flight, never grows with time
    assert pipeline.stats.last_lag < 4 * SlowEngine.delay
    assert late - early < 2_000_000, f"memory grew by {(late - early) / 1e6:.1f} MB"


def test_stop_while_engine_is_busy_keeps_the_deadline(broker, tiny_model_dir, tmp_path):
    audio = tmp_path / "noise.wav"
    sf.write(audio, (np.random.default_rng(1).standard_normal(60 * MODEL_RATE) * 0.05).astype(np.float32), MODEL_RATE)
    config = load_config(write_config(tmp_path, tiny_model_dir, broker.port, source=f"file:{audio}",
                                      extra={"stop_timeout": "1s"}))
    ring = RingBuffer(int(config.audio.buffer_seconds * MODEL_RATE), MODEL_RATE)
    daemon = Daemon(config, source=FileSource(audio, ring, realtime=True), engine_factory=SlowEngine.load)
    thread, codes = _run_in_thread(daemon)
    assert daemon.ready.wait(60)
    time.sleep(1.5)
    asked = time.monotonic()
    daemon.request_stop()
    thread.join(30)
    # capture stops at once; the window in flight (3 s) is abandoned after stop_timeout (1 s)
    assert codes == [0] and time.monotonic() - asked < 1 + 5 + 3
