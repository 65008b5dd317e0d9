"""A soak of the whole daemon: three rooms, faults on a schedule, its memory watched for an hour.

    python bench/soak.py --minutes 60                       # tiny model, faults every 5 minutes
    python bench/soak.py --minutes 60 --model-size small    # the ~63M-parameter model
    python bench/soak.py --minutes 3 --fault-every 1        # smoke run
    python bench/soak.py --minutes 25 --env MALLOC_ARENA_MAX=2 --probe

Starts the real parts itself: mosquitto (persistent, so that a restart loses nothing queued for
the subscriber), a PulseAudio server with two virtual microphones (rooms `kitchen` and
`nursery`), a GStreamer RTSP camera (room `porch`), and the daemon (`python -m monitor run`) as a
subprocess with a `sources:` config, a loud yes/no rule and a text rule with a match on it, and
a tiny or small random-weight Qwen2-Audio built by `monitor.testing.tiny.qwen2_audio.build`. Each
microphone plays its own loop of espeak-ng speech (utterances of many lengths), noise bursts
and quiet; the camera sends another.

Faults, every `--fault-every` minutes from minute `--first-fault` on, spread over the period P:
the camera killed for 60 s (at most P/5), the broker stopped for 5 s (at 0.3 P), the kitchen
muted for 30 s (at most P/10; at 0.5 P) and unmuted, the rule file rewritten (the loud rule's
question and the transcript's length alternate between two versions) and SIGHUP sent (at 0.75 P).

Every `--sample-every` seconds: the daemon's resident size, threads and open files, and glibc's
per-thread heaps seen in /proc/PID/smaps (64 MiB-aligned anonymous mappings: how many, how much
of them is resident). `--probe` runs the daemon under bench/soak_probe.py, which adds
`mallinfo2()`/`malloc_info()` from inside the process (and Python's tracemalloc with
`--tracemalloc`). A subscriber checks that every event the daemon logged as published arrived,
once, in order.

Prints one JSON object on stdout: per-minute medians, the growth of the resident size from
minute `--from-minute` (default 20) to the last minute in %, the events and the lost/duplicated/
out-of-order counts, the faults with their times, the machine's load. The same goes to
OUT/result.json with OUT/samples.csv, OUT/rss.png (if matplotlib is there) and the daemon's log
(OUT defaults to a new /tmp/soak-* folder).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import soundfile as sf
import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.conftest import VirtualMic, free_port, speech_wav, wait_port  # noqa: E402
from tests.helpers.mqtt_clients import Recorder, send  # noqa: E402
from tests.helpers.rtsp_server import RtspServer, have_gst_rtsp  # noqa: E402

RATE = 16_000
MIB = 1024 * 1024
HEAP = 64 * MIB  # glibc's per-thread arenas grow in heaps of at most 64 MiB, aligned to 64 MiB
MICS = {"kitchen": "room_a", "nursery": "room_b"}
CAMERA = "porch"
CAM_USER, CAM_PASSWORD = "admin", "soak-camera-secret"

SENTENCES = (
    "Hello.", "Dinner is ready, come downstairs please.", "Where did you put the keys?",
    "The weather tomorrow will be cloudy with some rain in the afternoon and wind from the west.",
    "Yes.", "Can you hear me? I think the baby is awake.", "Turn the music down a little.",
    "I am going to the shop, do we need anything else for the weekend, like bread or milk or eggs?",
    "Ouch, that hurt.", "Good night, sleep well.", "Who left the door open again?",
    "Call me back when you get this message, it is about the meeting on Thursday morning.",
)
RULES = """\
rules:
  - id: loud
    name: Something audible
    ask: {ask}
    threshold: 0.0
    release: 0.0
    patience: 1
    hold: 0s
    cooldown: 0s
    gate: {{min_dbfs: -40}}
    device_class: sound
  - id: speech
    name: Speech
    answer: text
    ask: What is being said? Write down the words exactly.
    max_new_tokens: {tokens}
  - id: any_words
    from: speech
    match: '\\w'
"""
RULE_VERSIONS = (
    {"ask": "Does this recording contain any sound at all? Answer yes or no.", "tokens": 6},
    {"ask": "Is anything audible in this recording? Answer yes or no.", "tokens": 8},
)
EVENT_LINE = re.compile(r" event (?:(?P<room>[a-z0-9_]+)/)?(?P<rule>\S+) (?P<kind>on|off|text|match) id=(?P<id>[0-9a-f]+)")

log_lock = threading.Lock()


def say(text: str) -> None:
    with log_lock:
        print(f"[soak {time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------- parts


class Broker:
    """mosquitto with persistence: a persistent subscriber's queue survives a restart."""

    def __init__(self, workdir: Path):
        self.binary = shutil.which("mosquitto") or shutil.which("mosquitto", path="/usr/sbin:/usr/local/sbin")
        self.port = free_port()
        self.conf = workdir / "mosquitto.conf"
        (workdir / "mosquitto-data").mkdir(exist_ok=True)
        self.conf.write_text(
            f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence true\n"
            f"persistence_location {workdir / 'mosquitto-data'}/\nmax_queued_messages 0\n"
            + ("user root\n" if os.geteuid() == 0 else "") + f"log_dest file {workdir / 'mosquitto.log'}\n")
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen([self.binary, "-c", str(self.conf)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        wait_port(self.port)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


def program(workdir: Path, name: str, seed: int, seconds: float) -> Path:
    """A room's loop: quiet background, utterances of many lengths, noise bursts (16 kHz mono)."""
    rng = np.random.default_rng(seed)
    speech = []
    for i, text in enumerate(SENTENCES):
        wav = speech_wav(workdir / f"sentence{i}.wav", text) if not (workdir / f"sentence{i}.wav").exists() \
            else workdir / f"sentence{i}.wav"
        speech.append(sf.read(wav, dtype="float32")[0])
    parts: list[np.ndarray] = []
    total = 0
    while total < seconds * RATE:
        kind = rng.choice(["quiet", "speech", "speech", "noise"])
        if kind == "quiet":
            part = np.zeros(int(rng.uniform(1.0, 6.0) * RATE), dtype=np.float32)
        elif kind == "speech":
            part = speech[int(rng.integers(len(speech)))] * float(rng.uniform(0.3, 0.9))
        else:
            part = (rng.standard_normal(int(rng.uniform(0.5, 3.0) * RATE)) * rng.uniform(0.05, 0.2)).astype(np.float32)
        parts.append(part)
        total += len(part)
    audio = np.concatenate(parts)[: int(seconds * RATE)]
    audio = audio + (rng.standard_normal(len(audio)) * 3e-4).astype(np.float32)  # never digital silence
    path = workdir / f"{name}.wav"
    sf.write(path, np.clip(audio, -1, 1), RATE, subtype="PCM_16")
    return path


class Subscriber(Recorder):
    """The hub's side: every message with its arrival time and MQTT's DUP flag (a QoS 1 redelivery)."""

    def __init__(self, *args, **kwargs):
        self.arrivals: list[tuple[float, str, str, bool]] = []  # (time, topic, event id, dup flag)
        super().__init__(*args, **kwargs)

    def _on_message(self, client, userdata, msg):
        if msg.topic.endswith("/event"):
            with self._cond:
                self.arrivals.append((time.time(), msg.topic, json.loads(msg.payload)["id"], bool(msg.dup)))
        super()._on_message(client, userdata, msg)


class Player:
    """Plays a room's loop into its virtual microphone, again and again, until stopped."""

    def __init__(self, mics: VirtualMic, room: str, wav: Path):
        self.mics, self.room, self.wav = mics, room, wav
        self.stopped = threading.Event()
        self.proc: subprocess.Popen | None = None
        self.thread = threading.Thread(target=self._run, name=f"play-{room}", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stopped.is_set():
            self.proc = self.mics.play(self.wav, wait=False, room=self.room)
            self.proc.wait()

    def stop(self) -> None:
        self.stopped.set()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
        self.thread.join(10)


def write_rules(path: Path, version: int) -> None:
    path.write_text(RULES.format(**RULE_VERSIONS[version % len(RULE_VERSIONS)]))


def write_config(workdir: Path, model: Path, broker: Broker, camera: RtspServer, args: argparse.Namespace) -> Path:
    sources = {room: {"name": room.title(), "audio": {"source": "mic", "device": device, "silence_timeout": "0s"}}
               for room, device in MICS.items()}
    sources[CAMERA] = {"name": CAMERA.title(), "audio": {"source": camera.url(password="${CAM_PASSWORD}")}}
    config = {
        "node_id": "home", "name": "Home", "sources": sources,
        "windows": {"length": f"{args.window}s", "hop": f"{args.hop}s"},
        "model": {"path": str(model), "device": "cpu"},
        "mqtt": {"host": "127.0.0.1", "port": broker.port, "topic_prefix": "am"},
        "rules": str(workdir / "rules.yaml"),
        "state_dir": str(workdir / "state"),
        "metrics": {"port": 0}, "web": {"port": 0},
        "log": {"level": "info"},
    }
    path = workdir / "home.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


# ---------------------------------------------------------------------------- sampling


def proc_sample(pid: int) -> dict:
    """Resident size, threads, open files, CPU seconds and the 64 MiB heaps of per-thread arenas."""
    status = Path(f"/proc/{pid}/status").read_text()
    field = dict(re.findall(r"^(VmRSS|Threads):\s+(\d+)", status, re.M))
    stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    heaps, heap_rss, full = 0, 0, 0
    start = size = rss = None
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        head = line.split()
        if "-" in head[0] and len(head) >= 5 and re.fullmatch(r"[0-9a-f]+-[0-9a-f]+", head[0]):
            lo, hi = (int(x, 16) for x in head[0].split("-"))
            anonymous = len(head) == 5
            start = lo if anonymous and lo % HEAP == 0 and head[1].startswith("rw") else None
            size, rss = hi - lo, None
        elif head[0] == "Rss:" and start is not None:
            heaps += 1
            heap_rss += int(head[1]) * 1024
            full += size == HEAP
            start = None
    return {"rss_mib": int(field["VmRSS"]) / 1024, "threads": int(field["Threads"]),
            "fds": len(os.listdir(f"/proc/{pid}/fd")), "cpu_s": (int(stat[11]) + int(stat[12])) / ticks,
            "heaps": heaps, "heaps_full": full, "heap_rss_mib": heap_rss / MIB}


def last_probe(path: Path) -> dict:
    """The newest line of the in-process probe, summarised."""
    try:
        with path.open("rb") as f:
            f.seek(max(0, path.stat().st_size - 65536))
            lines = f.read().decode(errors="replace").splitlines()
        row = json.loads(lines[-1])
    except (OSError, IndexError, ValueError):
        return {}
    heaps = row.get("heaps", [])
    out = {"malloc_arenas": len(heaps), "malloc_system_mib": sum(h["system"] for h in heaps) / MIB,
           "malloc_free_mib": sum(h["free"] for h in heaps) / MIB, "malloc_inuse_mib": row.get("uordblks", 0) / MIB,
           "malloc_mmap_mib": row.get("hblkhd", 0) / MIB}
    if "traced" in row:
        out["traced_mib"] = row["traced"] / MIB
    return out


# ---------------------------------------------------------------------------- the soak


class Soak:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="soak-", dir="/tmp"))
        self.out.mkdir(parents=True, exist_ok=True)
        self.work = self.out / "work"
        self.work.mkdir(exist_ok=True)
        self.samples: list[dict] = []
        self.faults: list[dict] = []
        self.t0 = self.t0_wall = 0.0
        self.stop = threading.Event()
        self.rules_version = 0

    def minute(self) -> float:
        return (time.monotonic() - self.t0) / 60

    def fault(self, what: str) -> None:
        self.faults.append({"minute": round(self.minute(), 2), "what": what})
        say(f"minute {self.minute():.1f}: {what}")

    def run(self) -> dict:
        args = self.args
        say(f"output in {self.out}")
        from monitor.testing.tiny.qwen2_audio import build

        model = build(self.work / f"model-{args.model_size}", size=args.model_size)
        self.broker = Broker(self.work)
        self.broker.start()
        (self.work / "pulse").mkdir(exist_ok=True)
        self.mics = VirtualMic(self.work / "pulse", rooms=list(MICS.values()))
        loop_s = 90.0
        cam_s = (args.fault_every + 3) * 60 if args.fault_every else args.minutes * 60 + 300
        self.camera = RtspServer(program(self.work, CAMERA, 3, cam_s), free_port(), CAM_USER, CAM_PASSWORD,
                                 log=self.work / "rtsp.log").start()
        write_rules(self.work / "rules.yaml", 0)
        config = write_config(self.work, model, self.broker, self.camera, args)
        self.recorder = Subscriber("127.0.0.1", self.broker.port, ["am/#"], client_id="soak-subscriber", persistent=True)
        env = {**os.environ, **self.mics.env, "CAM_PASSWORD": CAM_PASSWORD, "PYTHONUNBUFFERED": "1",
               **dict(e.split("=", 1) for e in args.env)}
        command = [sys.executable, "-m", "monitor", "run", "-c", str(config)]
        if args.probe:
            command[1:3] = [str(REPO / "bench" / "soak_probe.py")]
            env["SOAK_PROBE_OUT"] = str(self.out / "probe.jsonl")
            env["SOAK_PROBE_TRIM"] = str(self.out / "trim")
            env["SOAK_PROBE_EVERY"] = str(args.sample_every)
            if args.tracemalloc:
                env["SOAK_TRACEMALLOC"] = "1"
        self.daemon_log = self.out / "daemon.log"
        with self.daemon_log.open("w") as logf:
            self.daemon = subprocess.Popen(command, cwd=REPO, env=env, stdout=logf, stderr=subprocess.STDOUT)
        players: list[Player] = []
        try:
            self._wait_log("listening:", 300)
            self.t0, self.t0_wall = time.monotonic(), time.time()
            self.load_start = os.getloadavg()
            say(f"daemon {self.daemon.pid} listening; soaking {args.minutes} min")
            players = [Player(self.mics, device, program(self.work, room, 1 + i, loop_s))
                       for i, (room, device) in enumerate(MICS.items())]
            threading.Thread(target=self._faults, name="faults", daemon=True).start()
            self._sample_until(self.t0 + args.minutes * 60)
            self.stop.set()
        finally:
            self.stop.set()
            for p in players:
                p.stop()
            result = self._finish()
        return result

    def _wait_log(self, text: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.daemon_log.read_text(errors="replace").splitlines():
                if text in line:
                    return line
            if self.daemon.poll() is not None:
                raise RuntimeError(f"the daemon exited ({self.daemon.returncode}); see {self.daemon_log}")
            time.sleep(0.5)
        raise TimeoutError(f"the daemon did not log {text!r} within {timeout}s; see {self.daemon_log}")

    def _sample_until(self, end: float) -> None:
        with (self.out / "samples.csv").open("w", newline="") as f:
            writer: csv.DictWriter | None = None
            while time.monotonic() < end:
                if self.daemon.poll() is not None:
                    raise RuntimeError(f"the daemon exited ({self.daemon.returncode}) at minute {self.minute():.1f}")
                row = {"minute": round(self.minute(), 3), **proc_sample(self.daemon.pid)}
                if self.args.probe:
                    row.update(last_probe(self.out / "probe.jsonl"))
                self.samples.append(row)
                if writer is None:
                    writer = csv.DictWriter(f, fieldnames=list(row), extrasaction="ignore")
                    writer.writeheader()
                writer.writerow(row)
                f.flush()
                if self.args.trim_at and abs(row["minute"] - self.args.trim_at) < self.args.sample_every / 60 \
                        and not (self.out / "trim.done").exists():
                    (self.out / "trim").touch()
                    (self.out / "trim.done").touch()
                    self.fault("malloc_trim(0) asked of the probe")
                time.sleep(max(0.0, min(self.args.sample_every, end - time.monotonic())))

    def _faults(self) -> None:
        """Every fault once per period, spread over it (see the module's docstring)."""
        period = self.args.fault_every * 60
        if not period:
            return
        cam_down = min(60.0, period / 5)
        muted_for = min(30.0, period / 10)
        schedule = [(0.0, self._camera_down), (cam_down, self._camera_up), (0.3 * period, self._broker_restart),
                    (0.5 * period, lambda: self._mute(True)), (0.5 * period + muted_for, lambda: self._mute(False)),
                    (0.75 * period, self._rewrite_rules)]
        start = self.t0 + self.args.first_fault * 60
        cycle = 0
        while not self.stop.is_set():
            for offset, action in schedule:
                when = start + cycle * period + offset
                if self.stop.wait(max(0.0, when - time.monotonic())):
                    return
                try:
                    action()
                except Exception as exc:  # noqa: BLE001 - a fault that cannot be applied is recorded, not fatal
                    self.fault(f"fault failed: {type(exc).__name__}: {exc}")
            cycle += 1

    def _camera_down(self) -> None:
        self.camera.kill()
        self.fault("camera killed")

    def _camera_up(self) -> None:
        self.camera.start()
        self.fault("camera back")

    def _broker_restart(self) -> None:
        self.broker.stop()
        self.fault("broker stopped")
        time.sleep(5)
        self.broker.start()
        self.fault("broker back")

    def _mute(self, on: bool) -> None:
        send("127.0.0.1", self.broker.port, "am/kitchen/set/mute", b"ON" if on else b"OFF")
        self.fault("kitchen muted" if on else "kitchen unmuted")

    def _rewrite_rules(self) -> None:
        self.rules_version += 1
        write_rules(self.work / "rules.yaml", self.rules_version)
        self.daemon.send_signal(signal.SIGHUP)
        self.fault(f"rules rewritten (version {self.rules_version % len(RULE_VERSIONS)}) and SIGHUP")

    # ------------------------------------------------------------------ the end

    def _logged_events(self) -> list[tuple[str, str]]:
        """(room, id) of every event the daemon logged as safe, in its order."""
        out = []
        for line in self.daemon_log.read_text(errors="replace").splitlines():
            m = EVENT_LINE.search(line)
            if m:
                out.append((m.group("room") or "home", m.group("id")))
        return out

    def _received(self) -> list[str]:
        with self.recorder._cond:
            return [ident for _, _, ident, _ in self.recorder.arrivals]

    def _finish(self) -> dict:
        metrics = {}
        if self.daemon.poll() is None:
            time.sleep(10)  # the last windows and their events
            deadline = time.monotonic() + 90
            while time.monotonic() < deadline and not {i for _, i in self._logged_events()} <= set(self._received()):
                time.sleep(1)
            metrics = self._metrics()
            self.daemon.send_signal(signal.SIGTERM)
            try:
                code = self.daemon.wait(60)
            except subprocess.TimeoutExpired:
                self.daemon.kill()
                code = self.daemon.wait()
        else:
            code = self.daemon.returncode
        time.sleep(2)
        logged = self._logged_events()
        self.recorder.close()
        self.camera.stop()
        self.broker.stop()
        self.mics.stop()
        with (self.out / "events.csv").open("w", newline="") as f:  # what arrived, for a look afterwards
            writer = csv.writer(f)
            writer.writerow(["time", "topic", "id", "dup_flag"])
            writer.writerows(self.recorder.arrivals)
        order = {i: n for n, (_, i) in enumerate(logged)}
        seen: set[str] = set()
        duplicated = out_of_order = unexpected = 0
        redelivered = []  # duplicates: minute of arrival, and whether the broker marked them as a redelivery
        latest = -1
        for when, _, ident, dup in self.recorder.arrivals:
            if ident in seen:
                duplicated += 1
                redelivered.append({"minute": round((when - self.t0_wall) / 60, 2), "dup_flag": dup})
                continue
            seen.add(ident)
            if ident not in order:
                unexpected += 1
                continue
            if order[ident] < latest:
                out_of_order += 1
            latest = max(latest, order[ident])
        result = {
            "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
            "model_size": self.args.model_size, "minutes": self.args.minutes, "fault_every": self.args.fault_every,
            "env": self.args.env, "exit_code": code,
            **self._memory(),
            "events": len(logged), "events_by_room": {r: sum(1 for x, _ in logged if x == r) for r in {x for x, _ in logged}},
            "received": len(seen), "lost": sum(1 for _, i in logged if i not in seen), "duplicated": duplicated,
            "out_of_order": out_of_order, "unexpected": unexpected, "duplicates": redelivered,
            "tracebacks": self.daemon_log.read_text(errors="replace").count("Traceback"),
            "windows": metrics, "faults": self.faults,
            "load_start": [round(x, 2) for x in getattr(self, "load_start", (0, 0, 0))],
            "load_end": [round(x, 2) for x in os.getloadavg()],
            "machine": f"{platform.platform()}, {os.cpu_count()} CPUs", "output": str(self.out),
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        }
        (self.out / "result.json").write_text(json.dumps(result, indent=1))
        self._plot()
        return result

    def _metrics(self) -> dict:
        """Windows processed and skipped per room, from the daemon's Prometheus endpoint."""
        try:
            port = re.search(r"metrics on http://127.0.0.1:(\d+)/metrics", self._wait_log("metrics on", 1)).group(1)
            text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        except Exception:  # noqa: BLE001 - optional
            return {}
        out: dict[str, dict[str, float]] = {}
        for name in ("windows_processed_total", "windows_skipped_total", "windows_failed_total"):
            for room, value in re.findall(rf'audio_monitor_{name}{{source="(\w+)"}} ([0-9.e+]+)', text):
                out.setdefault(room, {})[name.replace("_total", "")] = float(value)
        return out

    def _memory(self) -> dict:
        if not self.samples:
            return {}
        by_minute: dict[int, list[dict]] = {}
        for s in self.samples:
            by_minute.setdefault(int(s["minute"]), []).append(s)
        per_minute = []
        for m in sorted(by_minute):
            rows = by_minute[m]
            entry = {"minute": m}
            for key in rows[0]:
                if key != "minute":
                    entry[key] = round(statistics.median(r[key] for r in rows), 2)
            per_minute.append(entry)
        last = per_minute[-1]["minute"]
        base = min(self.args.from_minute, max(0, last // 2))
        at = next(e for e in per_minute if e["minute"] >= base)
        peak = max(e["rss_mib"] for e in per_minute if e["minute"] >= base)
        return {
            "rss_first_mib": per_minute[0]["rss_mib"], "rss_max_mib": max(e["rss_mib"] for e in per_minute),
            "from_minute": at["minute"], "rss_from_mib": at["rss_mib"], "rss_last_mib": per_minute[-1]["rss_mib"],
            "growth_from_pct": round((per_minute[-1]["rss_mib"] / at["rss_mib"] - 1) * 100, 2),
            "peak_growth_from_pct": round((peak / at["rss_mib"] - 1) * 100, 2),
            "threads": sorted({s["threads"] for s in self.samples}), "fds": sorted({s["fds"] for s in self.samples}),
            "cpu_s": round(self.samples[-1]["cpu_s"] - self.samples[0]["cpu_s"], 1),
            "per_minute": per_minute,
        }

    def _plot(self) -> None:
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            return
        fig, ax = plt.subplots(figsize=(10, 4))
        ax.plot([s["minute"] for s in self.samples], [s["rss_mib"] for s in self.samples], label="RSS")
        ax.plot([s["minute"] for s in self.samples], [s["heap_rss_mib"] for s in self.samples], label="arena heaps (RSS)")
        for f in self.faults:
            ax.axvline(f["minute"], color="grey", alpha=0.3, lw=0.8)
        ax.set_xlabel("minute")
        ax.set_ylabel("MiB")
        ax.legend()
        ax.set_title(" ".join(sys.argv[1:]) or "soak")
        fig.tight_layout()
        fig.savefig(self.out / "rss.png", dpi=90)


def missing_parts() -> list[str]:
    missing = [p for p in ("pulseaudio", "paplay", "pactl", "espeak-ng", "sox")
               if shutil.which(p) is None]
    if shutil.which("mosquitto") is None and shutil.which("mosquitto", path="/usr/sbin:/usr/local/sbin") is None:
        missing.append("mosquitto")
    if not have_gst_rtsp():
        missing.append("GStreamer's RTSP server for /usr/bin/python3 (gir1.2-gst-rtsp-server-1.0 and plugins)")
    return missing


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=60, help="soak length after the daemon listens (default 60)")
    parser.add_argument("--fault-every", type=float, default=5, help="minutes between fault cycles; 0: none (default 5)")
    parser.add_argument("--first-fault", type=float, default=2, help="minute of the first fault cycle (default 2)")
    parser.add_argument("--model-size", choices=("tiny", "small"), default="tiny")
    parser.add_argument("--window", type=float, default=2.0, help="window length, seconds (default 2)")
    parser.add_argument("--hop", type=float, default=1.0, help="window hop, seconds (default 1)")
    parser.add_argument("--sample-every", type=float, default=5.0, help="seconds between samples (default 5)")
    parser.add_argument("--from-minute", type=int, default=20, help="growth is measured from this minute (default 20)")
    parser.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                        help="extra environment of the daemon, e.g. MALLOC_ARENA_MAX=2 (repeatable)")
    parser.add_argument("--probe", action="store_true", help="record mallinfo2/malloc_info from inside the daemon")
    parser.add_argument("--tracemalloc", action="store_true", help="with --probe: trace Python allocations too (slow)")
    parser.add_argument("--trim-at", type=float, default=0, help="with --probe: call malloc_trim(0) at this minute")
    parser.add_argument("--out", help="output folder (default: a new /tmp/soak-*)")
    args = parser.parse_args(argv)
    if bad := [e for e in args.env if "=" not in e]:
        parser.error(f"--env takes KEY=VALUE, not {bad[0]!r}")
    if missing := missing_parts():
        print(f"soak: missing {', '.join(missing)}: install them (see the project's testing notes)", file=sys.stderr)
        return 2
    result = Soak(args).run()
    print(json.dumps(result))
    return 0 if result.get("exit_code") == 0 and not result["lost"] and not result["duplicated"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
