"""Camera and network streams, and compressed files, with real parts.

A real RTSP server (GStreamer, run by the system python3: tests/helpers/rtsp_server.py) sends
H.264 video plus AAC audio of a WAV made here; a real `ffmpeg -listen` serves MP3 over HTTP;
real phone formats are made from the same WAV. The decoded audio is compared with the WAV.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import soxr
from helpers.rtsp_server import RtspServer, have_gst_rtsp

from monitor.audio.ringbuffer import RingBuffer
from monitor.audio.sources import FileSource, SourceError, make_source
from monitor.audio.redact import describe_source, redact_url, scrub
from monitor.audio.stream import StreamSource
from monitor.config import AudioSettings
from tests.conftest import free_port, ncc, need, need_tool

RATE = 16000
WAV_RATE = 48000
PASSWORD = "Zq7-secret-Pw"


def wait_until(predicate, timeout: float, step: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(step)
    return True


def test_signal(seconds: float, rate: int = WAV_RATE) -> np.ndarray:
    """Two slow frequency sweeps and an amplitude-modulated tone, all below 4 kHz (AMR-NB's band).

    The sweeps have unrelated periods, so that no two lags look alike to `ncc`.
    """
    t = np.arange(int(seconds * rate)) / rate

    def sweep(centre: float, depth: float, period: float) -> np.ndarray:
        return np.sin(2 * np.pi * (centre * t - depth * period / (2 * np.pi) * np.cos(2 * np.pi * t / period)))

    x = 0.25 * sweep(900, 700, 7.7) + 0.1 * np.sin(2 * np.pi * 440 * t) * np.sin(2 * np.pi * 0.7 * t) \
        + 0.05 * sweep(2800, 600, 3.1)
    return x.astype(np.float32)


test_signal.__test__ = False  # a helper, not a test


def aligned_ncc(got: np.ndarray, x: np.ndarray, start: float, end: float) -> tuple[float, int]:
    """`ncc` of x[start:end] seconds (a 48 kHz signal) inside 16 kHz audio, at the best third of a sample.

    Codec delays are whole samples at 48 kHz (AAC priming 1024, MP3 1105) and so fractions of a
    sample at 16 kHz; at 1.5 kHz a third of a sample already costs 0.02 of correlation.
    """
    best = (-1.0, 0)
    for shift in range(WAV_RATE // RATE):
        ref = soxr.resample(np.concatenate([np.zeros(shift, np.float32), x]), WAV_RATE, RATE)
        best = max(best, ncc(got, ref[int(start * RATE) : int(end * RATE)]))
    return best


@pytest.fixture(scope="module")
def camera_wav(tmp_path_factory) -> tuple[Path, np.ndarray]:
    """A 40 s, 48 kHz WAV for the camera to send, and its samples."""
    x = test_signal(40.0)
    path = tmp_path_factory.mktemp("camera") / "camera.wav"
    sf.write(path, x, WAV_RATE, subtype="PCM_16")
    return path, sf.read(path, dtype="float32")[0]


@pytest.fixture
def rtsp(camera_wav, tmp_path):
    """Factory of RTSP servers (stopped after the test)."""
    need(have_gst_rtsp(), "GStreamer's RTSP server for the system python3 (gir1.2-gst-rtsp-server-1.0 and plugins)")
    made: list[RtspServer] = []

    def factory(user: str | None = "admin", password: str | None = PASSWORD) -> RtspServer:
        server = RtspServer(camera_wav[0], free_port(), user, password, log=tmp_path / f"rtsp-{len(made)}.log")
        made.append(server)
        return server.start()

    yield factory
    for server in made:
        server.stop()


@pytest.fixture
def sources():
    """Stream sources stopped after the test, whatever happens."""
    made: list[StreamSource] = []

    def factory(url: str, seconds: float = 60, **kw) -> StreamSource:
        src = StreamSource(url, RingBuffer(int(seconds * RATE), RATE), **kw)
        made.append(src)
        src.start()
        return src

    yield factory
    for src in made:
        src.stop()


# ---------------------------------------------------------------------------- redaction


@pytest.mark.parametrize("url, expected", [
    ("rtsp://admin:hunter22@192.168.1.20:554/stream1", "rtsp://***@192.168.1.20:554/stream1"),
    ("rtsp://admin@cam.lan/Streaming/Channels/102", "rtsp://***@cam.lan/Streaming/Channels/102"),
    ("rtsp://cam.lan:554/h264Preview_01_sub", "rtsp://cam.lan:554/h264Preview_01_sub"),
    ("http://cam.lan/flv?port=1935&app=bcs&stream=channel0_sub.bcs&user=admin&password=hunter22",
     "http://cam.lan/flv?port=1935&app=bcs&stream=channel0_sub.bcs&user=***&password=***"),
    ("https://h.example/live.mp3?token=abc123&pwd=x1y2&api_key=k9&quality=hi",
     "https://h.example/live.mp3?token=***&pwd=***&api_key=***&quality=hi"),
    ("rtsp://admin:hunter22@[fe80::1%25eth0]:554/s", "rtsp://***@[fe80::1%25eth0]:554/s"),
    ("rtsp://u:p@[2001:db8::5]/live", "rtsp://***@[2001:db8::5]/live"),
    ("rtsp://admin:p%40ss%3Aw%2Frd@cam.lan:554/cam/realmonitor?channel=1&subtype=1",
     "rtsp://***@cam.lan:554/cam/realmonitor?channel=1&subtype=1"),
    ("rtsp://admin:p@ss/w?rd@cam.lan/live", "rtsp://***@cam.lan/live"),  # unencoded @ / ? in a password
    ("rtsp://admin:pa#ss@cam.lan/live", "rtsp://***@cam.lan/live"),  # and #, which would start a fragment
    ("http://cam.lan/cgi-bin/audio.cgi?user=admin&passwd=hunter22&access_token=abc",
     "http://cam.lan/cgi-bin/audio.cgi?user=***&passwd=***&access_token=***"),
    ("rtsp://10.0.0.9:554/user=admin_password=hunter22_channel=1_stream=0.sdp",
     "rtsp://10.0.0.9:554/user=***"),  # old DVRs put credentials in the path: over-masking is fine
], ids=["user-password", "user-only", "no-credentials", "query-user-password", "query-tokens", "ipv6-zone", "ipv6",
        "percent-encoded", "unencoded-at-slash-question", "unencoded-hash", "query-passwd", "path-credentials"])
def test_redact_url(url, expected):
    assert redact_url(url) == expected


def test_scrub_and_describe_source():
    url = "rtsp://admin:p%40ss-w0rd@cam.lan:554/stream1?token=T0ken-XYZ"
    message = (f"[Errno 5] Input/output error: '{url}' (as typed: admin:p@ss-w0rd, "
               "redirected to rtsp://other:pw@cam2/x, token T0ken-XYZ)")
    clean = scrub(message, url)
    for secret in ("p%40ss-w0rd", "p@ss-w0rd", "T0ken-XYZ", "other:pw"):
        assert secret not in clean, clean
    assert "rtsp://***@cam.lan:554/stream1?token=***" in clean
    assert describe_source("mic") == "mic"
    assert describe_source("file:/srv/rec/kitchen.m4a") == "file:/srv/rec/kitchen.m4a"
    assert describe_source(url) == "rtsp://***@cam.lan:554/stream1?token=***"
    src = StreamSource(url, RingBuffer(RATE, RATE))
    assert "w0rd" not in repr(src) and "w0rd" not in src.name and "T0ken" not in src.name


def test_make_source_gives_a_stream_source():
    audio = AudioSettings(source=f"rtsp://admin:{PASSWORD}@192.0.2.7:554/stream1")
    src = make_source(audio, RingBuffer(RATE, RATE))
    assert isinstance(src, StreamSource) and src.live and src.capture and not src.finished
    assert src.name == "rtsp://***@192.0.2.7:554/stream1" and src.stats.state == "starting"


# ---------------------------------------------------------------------------- RTSP camera


def test_camera_audio_matches_the_source_and_video_is_never_opened(rtsp, sources, camera_wav):
    server = rtsp()
    src = sources(server.url())
    assert src.stats.first_audio.wait(10), src.stats
    cpu0, wall0 = time.process_time(), time.monotonic()
    assert wait_until(lambda: src.ring.written >= 5 * RATE, 10), src.stats
    cpu = (time.process_time() - cpu0) / (time.monotonic() - wall0)
    assert src.stats.state == "running" and src.stats.restarts == 0 and src.codec == "aac"
    assert src.media_types == ("audio",)  # RTSP set up the audio track only: video never arrives
    got = src.ring.read(0, src.ring.written)
    score, lag = aligned_ncc(got, camera_wav[1], 1.0, 4.0)
    # AAC's encoder priming (1024 samples at 48 kHz) delays the audio by 341 samples at 16 kHz
    assert score >= 0.99 and 0 <= lag - RATE <= 2048, (score, lag)
    assert cpu < 0.25, f"the reader used {cpu:.0%} of a core"
    print(f"ncc {score:.4f} at lag {lag}, reader CPU {cpu:.1%}")


def test_camera_restart_is_retried_and_the_gap_filled(rtsp, sources, caplog, monkeypatch):
    escaped: list = []
    monkeypatch.setattr(threading, "excepthook", escaped.append)
    server = rtsp()
    src = sources(server.url(), max_backoff=1.0, open_timeout=3, read_timeout=2)
    with caplog.at_level(logging.INFO, logger="monitor.audio.stream"):
        assert src.stats.first_audio.wait(10), src.stats
        t0, w0 = time.monotonic(), src.ring.written
        time.sleep(1.5)
        server.kill()
        assert wait_until(lambda: src.stats.state == "retrying", 5), src.stats
        time.sleep(3.0)
        server.start()  # same port, like a camera coming back from a reboot
        assert wait_until(lambda: src.stats.state == "running" and src.stats.restarts == 1, 10), src.stats
        time.sleep(1.5)
        elapsed, captured = time.monotonic() - t0, (src.ring.written - w0) / RATE
    assert src.stats.restarts == 1 and src.stats.state == "running"
    assert 3.0 <= src.stats.lost_seconds <= 6.0, src.stats
    # silence stood in for the outage: the sample count still tracks the wall clock
    print(f"captured {captured:.2f}s in {elapsed:.2f}s, lost {src.stats.lost_seconds:.2f}s")
    assert abs(captured - elapsed) < 0.75, (captured, elapsed)
    assert src._thread is not None and src._thread.is_alive() and not escaped
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert 1 <= len(errors) <= 2, errors  # the drop, and perhaps one for the refused reopen: not one per retry
    assert any("resumed" in r.getMessage() for r in caplog.records)


def test_frozen_camera_is_detected_by_the_read_timeout(rtsp, sources):
    server = rtsp()
    src = sources(server.url(), max_backoff=1.0, open_timeout=2, read_timeout=1.5)
    assert src.stats.first_audio.wait(10), src.stats
    time.sleep(1.0)
    server.freeze()  # the connection stays open and goes quiet
    frozen = time.monotonic()
    assert wait_until(lambda: src.stats.state == "retrying", 6), src.stats
    detected = time.monotonic() - frozen
    assert 1.0 <= detected <= 4.0, detected
    assert "timeout" in src.stats.last_error or "no data" in src.stats.last_error, src.stats.last_error
    time.sleep(1.0)
    server.thaw()
    assert wait_until(lambda: src.stats.state == "running" and src.stats.restarts == 1, 12), src.stats
    assert src.stats.lost_seconds >= 2.0


def test_wrong_password_is_one_line_that_names_no_password(rtsp, sources, caplog):
    server = rtsp()
    wrong = "Wr0ng-Guess-77"
    with caplog.at_level(logging.DEBUG):  # every logger, FFmpeg's included
        src = sources(server.url(password=wrong), max_backoff=0.5, open_timeout=3)
        assert wait_until(lambda: src.stats.state == "retrying", 8), src.stats
        time.sleep(2.0)  # several retries
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1, [r.getMessage() for r in errors]
    assert "credentials" in errors[0].getMessage() and "rtsp://***@127.0.0.1" in errors[0].getMessage()
    assert "\n" not in errors[0].getMessage()
    assert src.stats.state == "retrying" and not src.stats.first_audio.is_set()
    for secret in (wrong, PASSWORD):
        assert secret not in caplog.text
        assert all(secret not in r.getMessage() for r in caplog.records)
        assert secret not in src.stats.last_error and secret not in repr(src) and secret not in src.name


def test_refused_and_unknown_hosts_say_what_to_check(sources):
    refused = sources(f"rtsp://admin:{PASSWORD}@127.0.0.1:{free_port()}/cam", max_backoff=0.5, open_timeout=2)
    unknown = sources(f"rtsp://admin:{PASSWORD}@no-such-camera.invalid/cam", max_backoff=0.5, open_timeout=2)
    assert wait_until(lambda: refused.stats.state == "retrying" and unknown.stats.state == "retrying", 10)
    assert "connection refused" in refused.stats.last_error
    assert "unknown host 'no-such-camera.invalid'" in unknown.stats.last_error, unknown.stats.last_error
    assert PASSWORD not in refused.stats.last_error + unknown.stats.last_error


# ---------------------------------------------------------------------------- HTTP


def listening(port: int) -> bool:
    """A socket in LISTEN on the port, without connecting (ffmpeg -listen serves one client only)."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == "0A":
                return True
    return False


def test_http_mp3_stream_decodes(camera_wav, sources, tmp_path):
    ffmpeg = need_tool("ffmpeg")
    port = free_port()
    with open(tmp_path / "ffmpeg.log", "wb") as log:
        proc = subprocess.Popen([ffmpeg, "-nostdin", "-hide_banner", "-re", "-i", str(camera_wav[0]), "-c:a",
                                 "libmp3lame", "-f", "mp3", "-listen", "1", f"http://127.0.0.1:{port}/live.mp3"],
                                stdout=log, stderr=subprocess.STDOUT)
    try:
        assert wait_until(lambda: listening(port), 10), (tmp_path / "ffmpeg.log").read_text()
        src = sources(f"http://127.0.0.1:{port}/live.mp3")
        assert src.stats.first_audio.wait(10), src.stats
        assert wait_until(lambda: src.ring.written >= 4 * RATE, 10), src.stats
        assert src.stats.state == "running" and src.codec.startswith("mp3")
        score, lag = aligned_ncc(src.ring.read(0, src.ring.written), camera_wav[1], 1.0, 3.0)
        assert score >= 0.99 and 0 <= lag - RATE <= 2048, (score, lag)
        src.stop()
    finally:
        proc.kill()
        proc.wait(5)


# ---------------------------------------------------------------------------- files through FFmpeg


def encode_amr_3gp(wav: Path, out: Path) -> Path:
    """AMR-NB in 3GP, what old phones record. Debian's ffmpeg has no AMR-NB encoder; PyAV's FFmpeg does."""
    import av

    x, rate = sf.read(wav, dtype="float32")
    pcm = (np.clip(soxr.resample(x, rate, 8000), -1, 1) * 32767).astype(np.int16)
    with av.open(str(out), "w") as container:
        stream = container.add_stream("libopencore_amrnb", rate=8000, layout="mono")
        stream.bit_rate = 12200
        for i in range(0, len(pcm) - 159, 160):
            frame = av.AudioFrame.from_ndarray(pcm[None, i : i + 160], format="s16", layout="mono")
            frame.rate = 8000
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return out


@pytest.fixture(scope="module")
def phone_files(tmp_path_factory) -> tuple[dict[str, Path], np.ndarray]:
    """The same 6 s of audio as M4A (AAC), MP3, 3GP (AMR-NB) and CAF (ALAC), made by ffmpeg."""
    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg is None:
        return {}, np.zeros(0, dtype=np.float32)
    folder = tmp_path_factory.mktemp("phone")
    x = test_signal(6.0)
    wav = folder / "source.wav"
    sf.write(wav, x, WAV_RATE, subtype="PCM_16")
    files = {}
    for name, args in {"m4a": ["-c:a", "aac", "-b:a", "96k"], "mp3": ["-c:a", "libmp3lame"],
                       "caf": ["-c:a", "alac"]}.items():
        files[name] = folder / f"rec.{name}"
        subprocess.run([ffmpeg, "-nostdin", "-loglevel", "error", "-y", "-i", str(wav), *args, str(files[name])], check=True)
    files["3gp"] = encode_amr_3gp(wav, folder / "rec.3gp")
    return files, x


@pytest.mark.parametrize("kind, decoders, threshold", [
    ("m4a", {"ffmpeg"}, 0.99),
    ("mp3", {"ffmpeg", "libsndfile"}, 0.99),  # libsndfile >= 1.1 reads MP3 itself
    ("3gp", {"ffmpeg"}, 0.9),  # AMR-NB: 8 kHz speech codec at 12.2 kbit/s
    ("caf", {"ffmpeg"}, 0.99),
])
def test_phone_recordings_decode_in_fast_mode(phone_files, kind, decoders, threshold):
    files, x = phone_files
    need(kind in files, "the `ffmpeg` program")
    ring = RingBuffer(10 * RATE, RATE)
    src = FileSource(files[kind], ring, realtime=False)
    assert src.decoder in decoders and src.duration == pytest.approx(6.0, abs=0.1)
    src.start()
    assert src.wait_for(10 * RATE, timeout=1) is False and src.finished and src.stats.state == "finished"
    got = ring.read(0, ring.written)
    assert abs(len(got) - 6 * RATE) <= 0.05 * RATE
    ref = soxr.resample(x, WAV_RATE, RATE)
    if kind == "3gp":  # compare with what can survive 8 kHz sampling
        ref = soxr.resample(soxr.resample(x, WAV_RATE, 8000), 8000, RATE)
    score, lag = ncc(got, ref[RATE : 5 * RATE])
    assert score >= threshold and abs(lag - RATE) <= 0.02 * RATE, (score, lag)
    # deterministic: a second read gives the very same samples
    again = RingBuffer(10 * RATE, RATE)
    src2 = FileSource(files[kind], again, realtime=False)
    src2.start()
    src2.wait_for(10 * RATE, timeout=1)
    assert np.array_equal(again.read(0, again.written), got)


def test_phone_recording_in_realtime_is_paced(phone_files):
    files, _ = phone_files
    need("m4a" in files, "the `ffmpeg` program")
    ring = RingBuffer(10 * RATE, RATE)
    src = FileSource(files["m4a"], ring, realtime=True)
    assert src.live and src.decoder == "ffmpeg"
    started = time.monotonic()
    src.start()
    try:
        time.sleep(1.5)
        assert 1.0 * RATE <= ring.written <= 2.0 * RATE and not src.finished
        assert wait_until(lambda: src.finished, 8)
        assert time.monotonic() - started >= 5.5
    finally:
        src.stop()


def test_corrupt_compressed_file_is_a_one_line_error(phone_files, tmp_path):
    files, _ = phone_files
    need("m4a" in files, "the `ffmpeg` program")
    bad = tmp_path / "broken.m4a"
    bad.write_bytes(files["m4a"].read_bytes()[:64] + os.urandom(4000))
    with pytest.raises(SourceError) as info:
        FileSource(bad, RingBuffer(RATE, RATE))
    message = str(info.value)
    assert message.startswith(f"audio.source: cannot decode {bad}") and "FFmpeg:" in message and "\n" not in message
