"""The home a soak runs (bench/soak.py): its parts, what they play, the daemon's config, and how it is sampled.

Built from the tests' own real parts: mosquitto, PulseAudio virtual microphones (`VirtualMic`),
the GStreamer RTSP camera, the recording MQTT client.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.conftest import VirtualMic, free_port, speech_wav, wait_port  # noqa: E402
from tests.helpers.mqtt_clients import Recorder  # noqa: E402
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


def missing_parts() -> list[str]:
    missing = [p for p in ("pulseaudio", "paplay", "pactl", "espeak-ng", "sox")
               if shutil.which(p) is None]
    if shutil.which("mosquitto") is None and shutil.which("mosquitto", path="/usr/sbin:/usr/local/sbin") is None:
        missing.append("mosquitto")
    if not have_gst_rtsp():
        missing.append("GStreamer's RTSP server for /usr/bin/python3 (gir1.2-gst-rtsp-server-1.0 and plugins)")
    return missing


