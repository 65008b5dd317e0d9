"""Audio sources with real parts: files of every kind, and a PulseAudio virtual microphone."""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import soxr

from monitor.audio.portaudio import PORTAUDIO
from monitor.audio.ringbuffer import RingBuffer
from monitor.audio.sources import FileSource, MicSource, SourceError, resolve_device
from monitor.windows import WindowScheduler
from tests.conftest import VirtualMic, ncc, need, speech_wav

RATE = 16000


# ---------------------------------------------------------------------------- files


@pytest.mark.parametrize(
    "suffix, rate, channels, subtype",
    [("wav", 8000, 1, "PCM_16"), ("flac", 48000, 2, "PCM_24"), ("ogg", 22050, 2, "VORBIS"), ("wav", 16000, 1, "FLOAT")],
)
def test_file_formats_become_16k_mono(tmp_path, suffix, rate, channels, subtype):
    t = np.arange(int(2.5 * rate)) / rate
    mono = (0.3 * np.sin(2 * np.pi * (100 * t + 500 * t**2))).astype(np.float32)  # a chirp: no two lags alike
    data = np.stack([mono] * channels, axis=1) if channels > 1 else mono
    path = tmp_path / f"sig.{suffix}"
    sf.write(path, data, rate, subtype=subtype)
    ring = RingBuffer(10 * RATE, RATE)
    src = FileSource(path, ring, realtime=False)
    src.start()
    assert src.wait_for(10 * RATE, timeout=1) is False and src.finished
    got = ring.read(0, ring.written)
    assert abs(len(got) - 2.5 * RATE) <= 2
    ref = soxr.resample(mono, rate, RATE) if rate != RATE else mono
    score, lag = ncc(got, ref[RATE // 2 : 2 * RATE])
    assert score > 0.99 and abs(lag - RATE // 2) <= 2


def test_missing_corrupt_and_folder_sources_are_one_line_errors(tmp_path):
    ring = RingBuffer(RATE, RATE)
    with pytest.raises(SourceError, match=r"^audio.source: file not found: .*nope.wav$"):
        FileSource(tmp_path / "nope.wav", ring)
    bad = tmp_path / "corrupt.wav"
    bad.write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk" + os.urandom(2000))
    with pytest.raises(SourceError) as info:
        FileSource(bad, ring)
    assert "cannot decode" in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(SourceError, match="is a folder"):
        FileSource(tmp_path, ring)


def test_truncated_file_ends_cleanly(tmp_path, caplog):
    path = tmp_path / "cut.flac"
    sf.write(path, np.random.default_rng(1).standard_normal(5 * RATE).astype(np.float32) * 0.1, RATE)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    ring = RingBuffer(10 * RATE, RATE)
    src = FileSource(path, ring, realtime=False)
    src.start()
    windows = list(WindowScheduler(src, 2.0, 1.0).windows())
    assert windows and src.finished
    assert ring.written < 5 * RATE


# ---------------------------------------------------------------------------- device choice


class _FakeSd:
    """query_devices() of a machine with two inputs and an output (device listing only)."""

    @staticmethod
    def query_devices():
        return [
            {"name": "HDA Intel PCH: ALC892 Analog", "max_input_channels": 2},
            {"name": "HDMI output", "max_input_channels": 0},
            {"name": "USB PnP Sound Device: Audio", "max_input_channels": 1},
        ]


def test_resolve_device_by_index_and_name():
    sd = _FakeSd()
    assert resolve_device(None, sd) is None
    assert resolve_device(2, sd) == 2
    assert resolve_device("2", sd) == 2
    assert resolve_device("usb", sd) == 2
    with pytest.raises(SourceError, match="no input device with index 1"):
        resolve_device(1, sd)
    with pytest.raises(SourceError, match=r"no input device matches 'webcam'.*audio-monitor devices"):
        resolve_device("webcam", sd)


# ---------------------------------------------------------------------------- microphone


def capture_windows(mic_rate: int, channels: int, wav: Path, vmic) -> tuple[list, MicSource]:
    ring = RingBuffer(60 * RATE, RATE)
    src = MicSource(ring, device="pulse", sample_rate=mic_rate, channels=channels)
    sched = WindowScheduler(src, 8.0, 1.0)
    stop = threading.Event()
    windows: list = []

    def consume():
        for w in sched.windows(stop):
            windows.append(w)

    src.start()
    try:
        assert src.stats.first_audio.wait(10), f"no audio from the virtual microphone: {src.stats}"
        consumer = threading.Thread(target=consume)
        consumer.start()
        time.sleep(0.5)
        played_from = ring.written
        vmic.play(wav)
        target = played_from + 7 * RATE
        deadline = time.monotonic() + 20
        while (not windows or windows[-1].end < target) and time.monotonic() < deadline:
            time.sleep(0.1)
        stop.set()
        consumer.join(5)
    finally:
        src.stop()
    return windows, src


@pytest.mark.parametrize("mic_rate, channels", [(16000, 1), (48000, 2)])
def test_speech_through_the_virtual_microphone(vmic, tmp_path, mic_rate, channels):
    wav = speech_wav(tmp_path / "s.wav", "The quick brown fox jumps over the lazy dog. Is anybody home?")
    ref, _ = sf.read(wav, dtype="float32")
    windows, src = capture_windows(mic_rate, channels, wav, vmic)
    assert windows, "the scheduler produced no window"
    best = max(ncc(w.audio, ref)[0] for w in windows)
    assert best >= 0.99, best
    assert src.stats.overflows == 0
    starts = [w.start for w in windows]
    assert all(b - a == RATE for a, b in zip(starts, starts[1:]))


def test_no_overflow_under_cpu_load(vmic):
    """30 s of capture (15 hops) while two threads hog the CPU (standing in for inference)."""
    import torch

    stop = threading.Event()

    def torch_hog():
        a = torch.randn(512, 512)
        while not stop.is_set():
            a = torch.tanh(a @ a)

    def python_hog():
        x = 0
        while not stop.is_set():
            for i in range(10_000):
                x += i * i

    hogs = [threading.Thread(target=torch_hog, daemon=True), threading.Thread(target=python_hog, daemon=True)]
    ring = RingBuffer(30 * RATE, RATE)
    src = MicSource(ring, device="pulse", sample_rate=16000, channels=1)
    sched = WindowScheduler(src, 8.0, 2.0)
    windows: list = []
    for h in hogs:
        h.start()
    src.start()
    try:
        assert src.stats.first_audio.wait(10)
        t0 = time.monotonic()
        first_index = ring.written
        for w in sched.windows():
            windows.append((w.start, w.end))
            if time.monotonic() - t0 >= 30:
                break
        elapsed = time.monotonic() - t0
        captured = ring.written - first_index
    finally:
        stop.set()
        src.stop()
    assert src.stats.overflows == 0 and src.stats.lost_seconds == 0 and src.stats.restarts == 0
    assert sched.skipped == 0
    # windows every hop, no gaps or repeats in the absolute indices
    assert all(b == a + 2 * RATE for (a, _), (b, _) in zip(windows, windows[1:]))
    assert len(windows) >= 12
    # the indices track real time: no samples went missing (allow PulseAudio's start-up latency)
    assert captured == pytest.approx(elapsed * RATE, rel=0.03)


def test_missing_device_retries_without_crashing(vmic, caplog):
    ring = RingBuffer(10 * RATE, RATE)
    src = MicSource(ring, device="no such microphone", max_backoff=0.5)
    with caplog.at_level(logging.ERROR, logger="monitor.audio.sources"):
        src.start()
        time.sleep(2.5)
        # the hearing detail names the configured device; the log line says what to do
        assert src.stats.state == "retrying" and src.stats.last_error == "device not found: 'no such microphone'"
        src.stop()
    errors = [r for r in caplog.records if "cannot open input device" in r.getMessage()]
    assert len(errors) == 1, [r.getMessage() for r in errors]  # once per state change, not per retry
    assert "no input device matches 'no such microphone'" in errors[0].getMessage()


def test_capture_survives_the_sound_server_going_away(tmp_path, vmic):
    """The device disappears (server killed) and returns: capture resumes, the gap is filled."""
    need(shutil.which("pulseaudio") is not None, "pulseaudio")
    own = VirtualMic(tmp_path)
    own.activate()
    ring = RingBuffer(60 * RATE, RATE)
    src = MicSource(ring, device="pulse", sample_rate=16000, max_backoff=1.0)
    try:
        src.start()
        assert src.stats.first_audio.wait(10)
        time.sleep(0.5)
        own.stop()
        deadline = time.monotonic() + 15
        while src.stats.state != "retrying" and time.monotonic() < deadline:
            time.sleep(0.1)
        assert src.stats.state == "retrying"
        time.sleep(1.5)
        own = VirtualMic(tmp_path)
        deadline = time.monotonic() + 20
        while (src.stats.state != "running" or src.stats.restarts < 1) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert src.stats.state == "running" and src.stats.restarts == 1
        assert src.stats.lost_seconds > 1.0
        before = ring.written
        time.sleep(1.0)
        assert ring.written - before > 0.5 * RATE
    finally:
        src.stop()
        own.stop()
        vmic.activate()


# ---------------------------------------------------------------------------- several microphones


@pytest.fixture
def room_mics(tmp_path, monkeypatch):
    """A PulseAudio server with one virtual microphone per room, seen by this process's PortAudio."""
    need(shutil.which("pulseaudio") is not None, "pulseaudio")
    (tmp_path / "pulse").mkdir()
    mics = VirtualMic(tmp_path / "pulse", rooms=["room_a", "room_b"])
    for key, value in mics.env.items():
        monkeypatch.setenv(key, value)
    assert PORTAUDIO.reinitialise(), "an input stream of an earlier test is still open"  # PortAudio sees the rooms
    yield mics
    mics.stop()
    monkeypatch.undo()
    PORTAUDIO.reinitialise()  # never under a stream that a failed test left opening


def _mic(device: str, name: str) -> MicSource:
    return MicSource(RingBuffer(30 * RATE, RATE), device=device, sample_rate=16000, max_backoff=1.0, name=name)


def _grows(src: MicSource, seconds: float) -> float:
    """Seconds of audio the source captured during the next `seconds`."""
    before = src.ring.written
    time.sleep(seconds)
    return (src.ring.written - before) / RATE


def _wait(predicate, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_an_unplugged_microphone_does_not_stop_the_others(room_mics):
    """Room B's microphone goes and comes back; room A's stream is never touched."""
    kitchen, nursery = _mic("room_a", "kitchen"), _mic("room_b", "nursery")
    kitchen.start()
    nursery.start()
    try:
        assert kitchen.stats.first_audio.wait(30) and nursery.stats.first_audio.wait(30)
        room_mics.unplug("room_b")
        assert _wait(lambda: nursery.stats.state == "retrying", 30), nursery.stats
        # several of the nursery's failed reopens (backoff 0.5, 1, 1, ...s): the kitchen hears on
        assert _grows(kitchen, 5.0) > 4.0, kitchen.stats
        assert nursery.stats.state == "retrying" and nursery.stats.last_error, nursery.stats
        room_mics.plug("room_b")
        assert _wait(lambda: nursery.stats.state == "running" and nursery.stats.restarts == 1, 60), nursery.stats
        assert _grows(nursery, 1.0) > 0.5
        assert _grows(kitchen, 1.0) > 0.5
    finally:
        kitchen.stop()
        nursery.stop()
    assert kitchen.stats.restarts == 0 and kitchen.stats.lost_seconds == 0 and kitchen.stats.state == "stopped"
    assert nursery.stats.lost_seconds > 1.0


def test_a_microphone_plugged_in_later_is_found_while_the_others_capture(room_mics, caplog):
    """A device missing at start appears: the device list is re-read, the others pause only for that."""
    kitchen, porch = _mic("room_a", "kitchen"), _mic("room_c", "porch")
    with caplog.at_level(logging.INFO, logger="monitor.audio"):
        kitchen.start()
        porch.start()
        try:
            assert kitchen.stats.first_audio.wait(30)
            assert _wait(lambda: porch.stats.state == "retrying", 30), porch.stats
            assert porch.stats.last_error == "device not found: 'room_c'"
            # still missing: looked for (in a child process) without touching the kitchen's stream
            assert _grows(kitchen, 4.0) > 3.0 and kitchen.stats.restarts == 0, kitchen.stats
            room_mics.plug("room_c")
            assert _wait(lambda: porch.stats.state == "running", 60), porch.stats
            assert porch.stats.first_audio.wait(30)
            assert _grows(kitchen, 1.0) > 0.5 and _grows(porch, 1.0) > 0.5
        finally:
            kitchen.stop()
            porch.stop()
    # the kitchen was paused once, for the re-read, and lost only that moment
    assert kitchen.stats.restarts == 1 and kitchen.stats.lost_seconds < 3.0, kitchen.stats
    assert any("porch's device 'room_c' appeared" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("close_fails", [False, True])
def test_an_error_in_capture_is_capture_lost_and_retried(vmic, monkeypatch, caplog, close_fails):
    """Whatever raises in the capture thread (the pump; the loop around it): the state says why, and
    capture comes back."""
    import monitor.audio.mic as sources

    calls = [0]

    class Flaky(sources.Converter):
        def __call__(self, samples):
            calls[0] += 1
            if calls[0] == 5:
                raise RuntimeError("the resampler failed")
            return super().__call__(samples)

    monkeypatch.setattr(sources, "Converter", Flaky)
    if close_fails:
        close = sources.PORTAUDIO.close

        def failing_close(stream, timeout=2.0):
            close(stream, timeout)
            if calls[0] == 5:
                raise RuntimeError("closing failed")
            return True

        monkeypatch.setattr(sources.PORTAUDIO, "close", failing_close)
    src = MicSource(RingBuffer(10 * RATE, RATE), device="pulse", sample_rate=16000, max_backoff=1.0)
    seen: list[tuple[str, str]] = []
    with caplog.at_level(logging.ERROR, logger="monitor.audio.sources"):
        src.start()
        try:
            assert _wait(lambda: seen.append((src.stats.state, src.stats.last_error)) or src.stats.restarts == 1, 20), \
                src.stats
            assert _grows(src, 1.0) > 0.5 and src.stats.state == "running"
        finally:
            src.stop()
    why = "closing failed" if close_fails else "the resampler failed"
    assert ("retrying", f"capture failed: RuntimeError: {why}") in seen
    errors = [r for r in caplog.records if f"capture failed: RuntimeError: {why}" in r.getMessage()]
    assert len(errors) == 1 and errors[0].exc_info is not None  # a bug: said once, with its traceback
