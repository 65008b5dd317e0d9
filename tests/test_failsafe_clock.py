"""Fail-safe 1: rule time (patience, hold, cooldown) runs on the audio's clock, never on the wall clock.

A step of the wall clock (an NTP correction, a person setting the time) must neither keep a rule ON
for an hour nor end its hold at once. Tested three ways: the pure rule engine fed windows whose wall
times jump; the listening pipeline capturing a real (virtual) microphone through a ring buffer whose
clock the test steps; and the daemon as a process under `faketime`, its clock stepped mid-run.
`replay --start` makes schedules in a replay independent of when it runs.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import yaml
from test_rules_support import T0, answer, engine_for, window

from monitor.audio.ringbuffer import RingBuffer
from monitor.audio.sources import MicSource
from monitor.cli import main as cli_main
from monitor.config import load_config
from monitor.pipeline import Pipeline
from monitor.rules import load_rules
from tests.conftest import need
from tests.daemon_support import DaemonProcess, events_of, write_config
from tests.tuning_support import bursts_wav

RATE = 16_000
HOUR = 3600.0


def one_rule(**knobs) -> str:
    rule = {"id": "r", "ask": "Does this recording contain a test sound? Answer yes or no.",
            "threshold": 0.7, "release": 0.5, "gate": {"min_dbfs": -60}, **knobs}
    return yaml.safe_dump({"rules": [rule]})


def _walk(engine, scores: list[float], step_at: int, step: float) -> list[tuple[int, str, float]]:
    """Windows every 2 s of audio; from window `step_at` on, the wall clock reads `step` seconds off."""
    out = []
    for i, score in enumerate(scores):
        win = window(T0 + 2 * i, i)
        if i >= step_at:
            win = dataclasses.replace(win, t_start=win.t_start + step, t_end=win.t_end + step)
        out.extend((i, e.kind, e.ts - win.t_end) for e in engine.update(win, answer(engine, win, score)))
    return out


@pytest.mark.parametrize("step", [-HOUR, HOUR], ids=["clock back 1h", "clock forward 1h"])
def test_hold_lasts_20s_of_audio_across_a_clock_step(tmp_path: Path, step: float) -> None:
    engine = engine_for(tmp_path, one_rule(hold="20s"))
    # hits at windows 0-2, the clock steps right after the last hit, misses after
    events = _walk(engine, [0.9, 0.9, 0.9] + [0.1] * 20, step_at=3, step=step)
    # last hit at window 2 (audio 4 s after window 0); OFF at the first window 20 s of audio later
    assert [(i, k) for i, k, _ in events] == [(0, "on"), (12, "off")]
    assert all(dt == 0 for *_, dt in events)  # events are still stamped with the wall clock of their window


@pytest.mark.parametrize("step", [-HOUR, HOUR], ids=["clock back 1h", "clock forward 1h"])
def test_cooldown_counts_audio_across_a_clock_step(tmp_path: Path, step: float) -> None:
    engine = engine_for(tmp_path, one_rule(cooldown="10s"))
    events = _walk(engine, [0.9, 0.1] + [0.9, 0.1] * 8, step_at=2, step=step)
    # ON at 0; hits at 2, 4 fall inside 10 s of audio; the hit at window 6 (12 s later) fires again
    assert [(i, k) for i, k, _ in events if k == "on"] == [(0, "on"), (6, "on"), (12, "on")]


def test_patience_is_a_count_of_windows_whatever_the_clock(tmp_path: Path) -> None:
    engine = engine_for(tmp_path, one_rule(patience=3))
    assert [(i, k) for i, k, _ in _walk(engine, [0.9, 0.9, 0.9], step_at=1, step=-HOUR)] == [(2, "on")]


# ---------------------------------------------------------------------------- the pipeline, clock injected


class SteppedClock:
    """time.time() plus an offset the test moves, as an NTP step would."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


HOLD_RULES = """\
rules:
  - id: loud
    ask: Does this recording contain any sound at all? Answer yes or no.
    threshold: 0.0
    release: 0.0
    hold: {hold}
    gate: {{min_dbfs: -45}}
"""


def _noise(path: Path, seconds: float) -> Path:
    rng = np.random.default_rng(5)
    sf.write(path, (rng.standard_normal(int(seconds * RATE)) * 0.2).astype(np.float32), RATE)
    return path


@pytest.mark.parametrize("step", [-HOUR, HOUR], ids=["clock back 1h", "clock forward 1h"])
def test_microphone_pipeline_holds_on_audio_time_when_the_ring_clock_steps(vmic, tiny_model_dir, tmp_path, step):
    hold = 3.0
    config = load_config(write_config(tmp_path, tiny_model_dir, 1, rules=HOLD_RULES.format(hold=f"{hold}s"),
                                      extra={"audio.device": "pulse"}))
    clock = SteppedClock()
    ring = RingBuffer(int(config.audio.buffer_seconds * RATE), RATE, clock=clock)
    pipeline = Pipeline(config, load_rules(config.rules), source=MicSource(ring, device="pulse"))
    decided: list[tuple[str, float, float]] = []  # (kind or "window", audio end, dBFS)
    stamps: list[float] = []  # the events' wall times
    stop = threading.Event()

    def consume() -> None:
        while not stop.is_set():
            result = pipeline.next_result(0.1)
            if result is not None:
                w = result.window
                decided.append(("window", w.audio_end, w.dbfs))
                for e in pipeline.process(result):
                    decided.append((e.kind, w.audio_end, w.dbfs))
                    stamps.append(e.ts)

    assert pipeline.load_model(120) is None
    pipeline.start_audio()
    consumer = threading.Thread(target=consume, daemon=True)
    consumer.start()
    try:
        assert ring.wait_for(RATE, 10)
        vmic.play(_noise(tmp_path / "noise.wav", 1.5))
        time.sleep(2.5)  # the last window that heard the sound has been cut ...
        clock.offset = step  # ... when the wall clock jumps
        deadline = time.monotonic() + 20
        while not any(k == "off" for k, *_ in decided) and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        stop.set()
        consumer.join(5)
        pipeline.stop()
    kinds = [k for k, *_ in decided if k != "window"]
    assert kinds == ["on", "off"], decided
    last_loud = max(a for k, a, db in decided if k == "window" and db > -45)
    off_at = next(a for k, a, _ in decided if k == "off")
    # OFF at the first window `hold` seconds of audio after the last loud one (windows every hop)
    assert hold <= off_at - last_loud <= hold + config.windows.hop + 1e-6
    # the ON was stamped before the step, the OFF on the stepped clock
    assert abs(stamps[0] - time.time()) < 30 and abs(stamps[1] - (time.time() + step)) < 30


# ---------------------------------------------------------------------------- the daemon under faketime


def _set_offset(stamp_file: Path, offset: str) -> None:
    """Step the clock of processes reading `stamp_file`: replaced whole, so that no reader sees it half written."""
    tmp = stamp_file.with_name(stamp_file.name + ".new")
    tmp.write_text(offset + "\n")
    os.replace(tmp, stamp_file)


def _faketime_env(stamp_file: Path) -> dict[str, str]:
    """The environment that runs a process under faketime's preload library, its offset read from `stamp_file`.

    The library is preloaded directly rather than through the `faketime` wrapper: the wrapper
    sets FAKETIME, which would override the file, and stands between the test and the daemon's
    signals.
    """
    need(shutil.which("faketime") is not None, "the `faketime` program (Debian package faketime)")
    libs = sorted(Path("/usr/lib").glob("*/faketime/libfaketime.so.1"))
    need(bool(libs), "libfaketime.so.1 (Debian package libfaketime)")
    _set_offset(stamp_file, "+0")
    # The monotonic clock does not step with NTP either: keep it real (both spellings of the switch).
    return {"LD_PRELOAD": str(libs[0]), "FAKETIME_TIMESTAMP_FILE": str(stamp_file), "FAKETIME_NO_CACHE": "1",
            "DONT_FAKE_MONOTONIC": "1", "FAKETIME_DONT_FAKE_MONOTONIC": "1"}


def test_daemon_under_faketime_holds_10s_of_audio_when_the_clock_jumps_back_then_forward(
        vmic, broker, subscriber_factory, tiny_model_dir, tmp_path):
    hold = 10.0  # the step back would hold for an hour, the step forward end it at once (~4 s): both outside the band
    config = write_config(tmp_path, tiny_model_dir, broker.port, rules=HOLD_RULES.format(hold="10s"),
                          extra={"audio.device": "pulse"})
    stamp = tmp_path / "faketime.txt"
    env = {**vmic.env, **_faketime_env(stamp)}
    sub = subscriber_factory(broker, "am/test_node/loud/event")
    noise = _noise(tmp_path / "noise.wav", 2.0)
    daemon = DaemonProcess(config, env=env)
    try:
        daemon.wait_log("listening:", timeout=120)
        gaps = []
        for offset in ("-3600", "+0"):  # back one hour, then forward one hour
            n = len(events_of(sub.messages))
            vmic.play(noise)
            quiet_since = time.monotonic()
            sub.wait_for(lambda t, p, r: json.loads(p)["kind"] == "on" and len(events_of(sub.messages)) > n, timeout=15)
            # step once the last window that heard the noise (2 s long, every 1 s) has been decided:
            # from here on only the audio's clock can tell how long the rule has been quiet
            time.sleep(max(0.0, quiet_since + 3.5 - time.monotonic()))
            _set_offset(stamp, offset)
            sub.wait_for(lambda t, p, r: json.loads(p)["kind"] == "off" and len(events_of(sub.messages)) > n + 1,
                         timeout=hold + 30)
            gaps.append(time.monotonic() - quiet_since)
            on, off = events_of(sub.messages)[-2:]
            assert off["kind"] == "off" and off["reason"] == "released", off
            wall_step = float(offset) - (-HOUR if offset == "+0" else 0.0)
            assert off["ts"] - on["ts"] == pytest.approx(gaps[-1] + wall_step, abs=8)  # the clock did step
        # OFF comes `hold` seconds of audio after the last window that heard the noise: that window
        # ends up to a window length (2 s) after the noise, and the answer takes a moment (seconds on a
        # loaded 2-core machine). On the wall clock the step back would hold for an hour (timeout above)
        # and the step forward would end the hold at once (a gap of ~4 s): both far outside this band.
        for gap in gaps:
            assert hold - 0.5 <= gap <= hold + 12, gaps
    finally:
        code = daemon.stop()
        print(daemon.output)  # shown when the test fails
    assert code == 0, daemon.output
    assert "Traceback" not in daemon.output


# ---------------------------------------------------------------------------- replay --start


NIGHT_RULES = """\
rules:
  - id: night_loud
    ask: Does this recording contain any sound at all? Answer yes or no.
    threshold: 0.0
    release: 0.0
    gate: {min_dbfs: -40}
    schedule: ["22:00-06:00"]
"""


def _replay(tmp_path: Path, tiny_model_dir: Path, recording: Path, name: str, *start: str) -> list[dict]:
    config = write_config(tmp_path, tiny_model_dir, 1, rules=NIGHT_RULES)
    out = tmp_path / name
    assert cli_main(["replay", str(recording), "-c", str(config), "--out", str(out), "-q", *start]) == 0
    return [json.loads(line) for line in (out / "events.jsonl").read_text().splitlines()]


def test_replay_start_decides_schedules_whatever_the_time_of_day(tiny_model_dir, tmp_path):
    recording = bursts_wav(tmp_path / "rec.wav", 12, [(3, 6)])
    at_night = _replay(tmp_path, tiny_model_dir, recording, "night", "--start", "2026-11-30T23:00:00")
    at_noon = _replay(tmp_path, tiny_model_dir, recording, "noon", "--start", "2026-11-30T12:00:00")
    assert [e["kind"] for e in at_night] == ["on", "off"]
    assert at_noon == []
    assert at_night[0]["time"].startswith("2026-11-30T23:00:0")  # stamped on the given clock
    # default: the file's modification time, so the same file gives the same events at any hour
    night = time.mktime((2026, 11, 29, 23, 30, 0, 0, 0, -1))
    os.utime(recording, (night, night))
    by_mtime = _replay(tmp_path, tiny_model_dir, recording, "mtime")
    assert [(e["kind"], e["at"]) for e in by_mtime] == [(e["kind"], e["at"]) for e in at_night]
    assert by_mtime[0]["time"].startswith("2026-11-29T23:30:0")


def test_replay_start_that_is_not_a_time_is_one_line(tiny_model_dir, tmp_path, capsys):
    recording = bursts_wav(tmp_path / "rec.wav", 4)
    with pytest.raises(SystemExit) as exc:
        _replay(tmp_path, tiny_model_dir, recording, "bad", "--start", "yesterday")
    assert exc.value.code == 2
    assert "expected an ISO-8601 time" in capsys.readouterr().err
