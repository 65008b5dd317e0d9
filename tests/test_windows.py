"""Window scheduler over real file sources: timing, content, level, VAD, utterances, skipping."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import soxr

from monitor.audio.levels import dbfs
from monitor.audio.ringbuffer import RingBuffer
from monitor.audio.sources import CaptureStats, FileSource
from monitor.windows import UtteranceTracker, WindowScheduler
from tests.conftest import ncc, speech_wav

RATE = 16000


def scheduler_for(path: Path, length=8.0, hop=2.0, realtime=False, seconds=60):
    ring = RingBuffer(seconds * RATE, RATE)
    source = FileSource(path, ring, realtime=realtime)
    source.start()
    return source, WindowScheduler(source, length, hop, vad_aggressiveness=2)


def test_windows_cover_a_44k_stereo_file_exactly(tmp_path):
    rng = np.random.default_rng(0)
    seconds, rate = 20, 44100
    left = rng.standard_normal(seconds * rate).astype(np.float32) * 0.1
    right = np.roll(left, 0) * 0.5
    path = tmp_path / "stereo.flac"
    sf.write(path, np.stack([left, right], axis=1), rate)
    reference = soxr.resample((left + right) / 2, rate, RATE, quality="HQ")

    _, sched = scheduler_for(path, length=8, hop=2)
    windows = list(sched.windows())
    starts = [w.start for w in windows]
    # full windows every 2 s from 0..12 s, then the tail window ending at the last sample
    assert starts[:7] == [i * 2 * RATE for i in range(7)]
    assert all(w.end - w.start == 8 * RATE for w in windows)
    assert windows[-1].final and windows[-1].end == sched.ring.written
    assert [w.seq for w in windows] == list(range(len(windows)))
    for w in windows[:7]:
        np.testing.assert_allclose(w.audio, reference[w.start : w.end], atol=1e-3)
    score, lag = ncc(windows[3].audio, reference[6 * RATE : 7 * RATE])
    assert score > 0.999 and lag == 0
    assert sched.skipped == 0


def test_short_file_gives_one_window_of_its_length(tmp_path):
    path = tmp_path / "short.wav"
    sf.write(path, np.full(3 * RATE, 0.25, dtype=np.float32), RATE)
    _, sched = scheduler_for(path)
    (w,) = list(sched.windows())
    assert (w.start, w.end, w.final) == (0, 3 * RATE, True)
    assert w.duration == pytest.approx(3.0)


def test_level_in_dbfs():
    t = np.arange(RATE) / RATE
    assert dbfs(np.sin(2 * np.pi * 440 * t).astype(np.float32)) == pytest.approx(-3.01, abs=0.05)
    assert dbfs(0.5 * np.sin(2 * np.pi * 440 * t).astype(np.float32)) == pytest.approx(-9.03, abs=0.05)
    assert dbfs(np.zeros(RATE, dtype=np.float32)) == -120.0
    assert dbfs(np.zeros(0, dtype=np.float32)) == -120.0


def test_speech_ratio_and_utterances_each_reported_once(tmp_path):
    a = speech_wav(tmp_path / "a.wav", "Hello, is anybody home? Please come to the kitchen.")
    b = speech_wav(tmp_path / "b.wav", "I think I need some help over here.")
    sa, _ = sf.read(a, dtype="float32")
    sb, _ = sf.read(b, dtype="float32")
    gap = np.zeros(3 * RATE, dtype=np.float32)
    audio = np.concatenate([gap, sa, gap, sb, gap, gap, gap, gap])
    path = tmp_path / "talk.wav"
    sf.write(path, audio, RATE)

    _, sched = scheduler_for(path, length=8, hop=2)
    windows = list(sched.windows())
    utterances = [u for w in windows for u in w.utterances]
    assert len(utterances) == 2, utterances
    first, second = utterances
    # each utterance lies where its speech was placed (VAD frames are 30 ms)
    assert abs(first.start - 3 * RATE) < 0.3 * RATE and abs(first.end - (3 * RATE + len(sa))) < 0.5 * RATE
    b_start = 6 * RATE + len(sa)
    assert abs(second.start - b_start) < 0.3 * RATE and abs(second.end - (b_start + len(sb))) < 0.5 * RATE
    for w in windows:
        for u in w.utterances:
            assert w.start <= u.start < u.end <= w.end
    talking = max(w.speech_ratio for w in windows)
    quiet = windows[-1].speech_ratio
    assert talking > 0.3 and quiet < 0.05
    assert all(len(w.speech) == (w.end - w.start) // 480 for w in windows if w.start % 480 == 0)


def test_utterance_tracker_bridges_short_pauses_and_caps_length():
    tr = UtteranceTracker(hangover_frames=3, min_frames=2, max_frames=10)
    flags = np.array([0, 1, 1, 0, 0, 1, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0], dtype=bool)
    # 1..6 is one utterance (pause of 2 <= hangover), the lone frame at 11 is too short
    assert tr.feed(0, flags) == [(1, 7)]
    long = np.ones(25, dtype=bool)
    assert tr.feed(100, long) == [(100, 110), (110, 120)]
    assert tr.flush() == [(120, 125)]


class _LiveRing:
    """A live source driven by the test: audio arrives in big bursts."""

    def __init__(self):
        self.ring = RingBuffer(60 * RATE, RATE)
        self.stats = CaptureStats()
        self.live = True
        self.finished = False

    def start(self):
        pass

    def stop(self):
        self.ring.close()

    def wait_for(self, index, timeout):
        return self.ring.wait_for(index, timeout)


def test_live_scheduler_skips_stale_windows_instead_of_waiting():
    src = _LiveRing()
    sched = WindowScheduler(src, 4.0, 1.0)
    stop = threading.Event()
    gen = sched.windows(stop)
    src.ring.write(np.zeros(4 * RATE, dtype=np.float32))
    first = next(gen)
    assert (first.start, first.end) == (0, 4 * RATE)
    # the consumer was away for 10 s: it gets the newest window, the missed ones are counted
    src.ring.write(np.zeros(10 * RATE, dtype=np.float32))
    second = next(gen)
    assert second.end == 14 * RATE
    assert sched.skipped == 9
    stop.set()


def test_an_outage_is_lost_audio_not_skipped_windows():
    """A camera down 61.8 s: the gap is lost audio, its windows `lost`; only falling behind is `skipped`."""
    from monitor.audio.sources import fill_gap

    src = _LiveRing()
    sched = WindowScheduler(src, 8.0, 2.0)
    stop = threading.Event()
    gen = sched.windows(stop)
    src.ring.write(np.full(8 * RATE, 0.1, dtype=np.float32))
    assert next(gen).end == 8 * RATE
    fill_gap(src.ring, src.stats, 61.8)  # what a source writes when the stream comes back
    src.ring.write(np.full(int(8.2 * RATE), 0.1, dtype=np.float32))
    window = next(gen)
    assert window.end == 78 * RATE  # the first window after the gap, on the hop grid
    assert src.stats.lost_seconds == pytest.approx(61.8)
    # windows ending in (8 s, 69.8 + 8 s) meet the gap: 10 s .. 76 s, 34 of them; none was skipped
    assert (sched.lost, sched.skipped) == (34, 0)
    # the consumer away for 10 s with audio flowing: that is falling behind
    src.ring.write(np.full(10 * RATE, 0.1, dtype=np.float32))
    assert next(gen).end == 88 * RATE
    assert (sched.lost, sched.skipped) == (34, 4)
    stop.set()


def test_realtime_file_is_paced(tmp_path):
    path = tmp_path / "tone.wav"
    sf.write(path, np.full(int(1.5 * RATE), 0.1, dtype=np.float32), RATE)
    source, sched = scheduler_for(path, length=1.0, hop=0.5, realtime=True)
    import time

    t0 = time.monotonic()
    windows = list(sched.windows())
    elapsed = time.monotonic() - t0
    assert [w.end for w in windows] == [RATE, int(1.5 * RATE)]
    assert elapsed >= 1.2  # paced, not read at once (a lower bound only: never a speed test)
    assert source.finished
