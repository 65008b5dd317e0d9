"""Shared test harness: a real mosquitto, a PulseAudio virtual microphone, tiny real models.

Under CI=true a missing part fails the test instead of skipping it, so CI cannot go green by
skipping what it was meant to test.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

# `model.dtype: auto` picks bfloat16 on a CPU with native bfloat16 (monitor/engine/placement.py). The
# suite's engines, and the daemons it starts, compare scores at float32's tolerances: pin auto to
# float32 here and in every child process. tests/test_precision.py checks the choice itself, both ways.
os.environ["MONITOR_CPU_BF16"] = "0"
# One torch (OpenMP) thread here and in every child process: the suite's models are tiny, and on a
# 2-core machine a second thread per process only spins against the other processes (pytest, the
# daemon under test, the vLLM server). Measured: a tiny model's load with its self-checks took 10-30 s
# with 2 threads on a busy machine, 4-6 s with 1. Set OMP_NUM_THREADS to override.
os.environ.setdefault("OMP_NUM_THREADS", "1")


def need(condition: bool, what: str) -> None:
    """Skip (laptop) or fail (CI) when a real part the test needs is missing."""
    if condition:
        return
    if IN_CI:
        pytest.fail(f"CI=true and {what} is missing: install it (make test does this as root)")
    pytest.skip(f"{what} is missing")


def need_tool(name: str) -> str:
    path = shutil.which(name)
    need(path is not None, f"the `{name}` program")
    return path  # type: ignore[return-value]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout}s")


# ---------------------------------------------------------------------------- MQTT broker


class Broker:
    """A private mosquitto on a loopback port; stop() and start() keep the port."""

    def __init__(self, workdir: Path, extra_conf: str = "", port: int | None = None):
        # mosquitto lives in /usr/sbin, often outside a user's PATH
        self.binary = shutil.which("mosquitto") or shutil.which("mosquitto", path="/usr/sbin:/usr/local/sbin")
        need(self.binary is not None, "the `mosquitto` broker")
        self.workdir = workdir
        self.port = port or free_port()
        self.host = "127.0.0.1"
        self.conf = workdir / f"mosquitto-{self.port}.conf"
        self.log = workdir / f"mosquitto-{self.port}.log"
        self.conf.write_text(
            f"listener {self.port} 127.0.0.1\n"
            + ("allow_anonymous true\n" if "allow_anonymous" not in extra_conf else "")
            + "persistence false\n"
            + ("user root\n" if os.geteuid() == 0 else "")  # else it drops to `mosquitto` and cannot write its log here
            + f"log_dest file {self.log}\n"
            + "log_type all\n"
            + extra_conf
        )
        self.proc: subprocess.Popen | None = None

    def start(self) -> Broker:
        assert self.proc is None or self.proc.poll() is not None, "broker already running"
        self.proc = subprocess.Popen([self.binary, "-c", str(self.conf)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            wait_port(self.port)
        except TimeoutError:
            err = self.proc.stderr.read().decode() if self.proc.poll() is not None else ""
            raise RuntimeError(f"mosquitto did not start: {err}\n{self.log.read_text() if self.log.exists() else ''}")
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    """A fresh anonymous broker for one test."""
    b = Broker(tmp_path).start()
    yield b
    b.stop()


@pytest.fixture
def make_broker(tmp_path: Path) -> Iterator:
    """Factory for brokers with extra mosquitto.conf lines (auth, TLS)."""
    made: list[Broker] = []

    def factory(extra_conf: str = "", start: bool = True) -> Broker:
        b = Broker(tmp_path, extra_conf)
        made.append(b)
        return b.start() if start else b

    yield factory
    for b in made:
        b.stop()


class Subscriber:
    """A paho-mqtt test subscriber that records every message (topic, payload, retain)."""

    def __init__(self, host: str, port: int, topics: str | list[str] = "#"):
        import threading

        import paho.mqtt.client as mqtt

        self.messages: list[tuple[str, bytes, bool]] = []
        self._cond = threading.Condition()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"test-sub-{os.getpid()}-{id(self)}")
        topics = [topics] if isinstance(topics, str) else topics
        subscribed = threading.Event()

        def on_connect(client, _userdata, _flags, reason, _props):
            if not reason.is_failure:
                client.subscribe([(t, 1) for t in topics])

        def on_subscribe(*_args):
            subscribed.set()

        def on_message(_client, _userdata, msg):
            with self._cond:
                self.messages.append((msg.topic, msg.payload, bool(msg.retain)))
                self._cond.notify_all()

        self.client.on_connect = on_connect
        self.client.on_subscribe = on_subscribe
        self.client.on_message = on_message
        self.client.connect(host, port)
        self.client.loop_start()
        if not subscribed.wait(10):
            raise TimeoutError("test subscriber could not subscribe")

    def wait_for(self, predicate, timeout: float = 10.0, after: int = 0):
        """First message (from index `after` on) for which predicate(topic, payload, retain) is true,
        or TimeoutError."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for m in self.messages[after:]:
                    if predicate(*m):
                        return m
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    seen = "\n".join(f"  {t} {p[:200]!r}" for t, p, _ in self.messages[-20:])
                    raise TimeoutError(f"no matching MQTT message within {timeout}s; last seen:\n{seen}")
                self._cond.wait(remaining)

    def on_topic(self, topic: str) -> list[bytes]:
        with self._cond:
            return [p for t, p, _ in self.messages if t == topic]

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@pytest.fixture
def subscriber_factory() -> Iterator:
    subs: list[Subscriber] = []

    def factory(broker: Broker, topics: str | list[str] = "#") -> Subscriber:
        s = Subscriber(broker.host, broker.port, topics)
        subs.append(s)
        return s

    yield factory
    for s in subs:
        s.close()


@pytest.fixture
def recorders() -> Iterator:
    """Factory of recording MQTT clients (tests/helpers/mqtt_clients.Recorder), closed after the test."""
    from helpers.mqtt_clients import Recorder

    made: list[Recorder] = []

    def factory(broker: Broker, topics: str | list[str] = "#", **kw) -> Recorder:
        made.append(Recorder(broker.host, broker.port, topics, **kw))
        return made[-1]

    yield factory
    for r in made:
        r.close()


# ---------------------------------------------------------------------------- virtual microphone

VMIC_PA = """\
load-module module-native-protocol-unix auth-anonymous=1
load-module module-null-source source_name=silence rate=16000 channels=1 max_latency_msec=20
load-module module-virtual-source source_name=vmic master=silence uplink_sink=vmic_in rate=16000 channels=1
set-default-source vmic
set-default-sink vmic_in
"""


def room_mic_pa(room: str) -> list[str]:
    """The two modules of one room's virtual microphone (a null source, and the virtual source over it)."""
    return [f"module-null-source source_name=silence_{room} rate=16000 channels=1 max_latency_msec=20",
            f"module-virtual-source source_name=vmic_{room} master=silence_{room} uplink_sink=vmic_{room}_in "
            "rate=16000 channels=1"]


def rooms_pa(rooms: list[str]) -> str:
    """A PulseAudio script with one virtual microphone per room: source `vmic_{room}`, fed by sink `vmic_{room}_in`."""
    lines = ["load-module module-native-protocol-unix auth-anonymous=1"]
    for room in rooms:
        lines += [f"load-module {module}" for module in room_mic_pa(room)]
    return "\n".join(lines) + "\n"


def _asound_pcm(room: str) -> str:
    return f'pcm.{room} {{ type pulse; device vmic_{room}; hint {{ show on; description "{room}" }} }}\n'


class VirtualMic:
    """A PulseAudio server whose default source is a virtual microphone fed by `play()`.

    With `rooms`, one virtual microphone per room instead, each an ALSA device of its own named
    after the room (through `$HOME/.asoundrc`: run the recording process with `env`), played
    into with `play(wav, room=...)`. Each can be unplugged (`unplug`) and plugged in again or for
    the first time (`plug`); as with a USB microphone, streams recording from an unplugged one end
    (PulseAudio is told not to move them to another room's microphone).
    """

    def __init__(self, workdir: Path, rooms: list[str] | None = None):
        need_tool("pulseaudio")
        self.paplay = need_tool("paplay")
        self.workdir = workdir
        self.rooms = rooms or []
        self.runtime = workdir / "xdg"
        self.runtime.mkdir(mode=0o700, exist_ok=True)
        os.chmod(self.runtime, 0o700)
        (workdir / "vmic.pa").write_text(VMIC_PA if not rooms else rooms_pa(rooms))
        self.env = {"XDG_RUNTIME_DIR": str(self.runtime), "PULSE_SERVER": f"unix:{self.runtime}/pulse/native"}
        if rooms:
            home = workdir / "home"
            home.mkdir(exist_ok=True)
            (home / ".asoundrc").write_text("".join(_asound_pcm(r) for r in rooms))
            (home / ".config" / "pulse").mkdir(parents=True, exist_ok=True)
            (home / ".config" / "pulse" / "daemon.conf").write_text("rescue-streams = no\n")
            self.env["HOME"] = str(home)
        self.log = workdir / "pulse.log"
        self.proc = subprocess.Popen(
            ["pulseaudio", "-n", "-F", str(workdir / "vmic.pa"), "--daemonize=no", "--exit-idle-time=-1",
             f"--log-target=file:{self.log}"],
            env={**os.environ, **self.env}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        socket_path = self.runtime / "pulse" / "native"
        deadline = time.monotonic() + 15
        while not socket_path.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"pulseaudio did not start: {self.log.read_text() if self.log.exists() else ''}")
            time.sleep(0.05)
        ok = subprocess.run(["pactl", "info"], env={**os.environ, **self.env}, capture_output=True)
        assert ok.returncode == 0, ok.stderr

    def activate(self) -> None:
        """Point this process (and children) at the server; make PortAudio see it."""
        os.environ.update(self.env)
        if "sounddevice" in sys.modules:
            from monitor.audio.portaudio import PORTAUDIO

            PORTAUDIO.reinitialise()  # waits for no input stream to be open: terminating under one aborts

    def play(self, wav: Path | str, wait: bool = True, room: str | None = None) -> subprocess.Popen:
        """Play a file into the virtual microphone (of `room`)."""
        sink = "vmic_in" if room is None else f"vmic_{room}_in"
        proc = subprocess.Popen([self.paplay, f"--device={sink}", str(wav)], env={**os.environ, **self.env})
        if wait:
            assert proc.wait(120) == 0, f"paplay {wav} failed"
        return proc

    def pactl(self, *args: str) -> str:
        done = subprocess.run(["pactl", *args], env={**os.environ, **self.env}, capture_output=True, text=True, timeout=30)
        assert done.returncode == 0, f"pactl {' '.join(args)}: {done.stderr}"
        return done.stdout

    def unplug(self, room: str) -> None:
        """Remove a room's microphone (its virtual source): the streams recording from it end."""
        for line in self.pactl("list", "short", "modules").splitlines():
            if f"source_name=vmic_{room} " in line:
                self.pactl("unload-module", line.split()[0])
                return
        raise AssertionError(f"no microphone of {room} is plugged in")

    def plug(self, room: str) -> None:
        """Add a room's microphone again, or a new one (then also a new ALSA device named after it)."""
        modules = self.pactl("list", "short", "modules")
        for module in room_mic_pa(room):
            if module.split()[1] not in modules:
                self.pactl("load-module", *module.split())
        asoundrc = Path(self.env["HOME"]) / ".asoundrc"
        if f"pcm.{room} " not in asoundrc.read_text():
            with asoundrc.open("a") as f:
                f.write(_asound_pcm(room))
        if room not in self.rooms:
            self.rooms.append(room)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()


@pytest.fixture(scope="session")
def vmic() -> Iterator[VirtualMic]:
    workdir = Path(tempfile.mkdtemp(prefix="vmic-"))
    mic = VirtualMic(workdir)
    mic.activate()
    yield mic
    mic.stop()
    shutil.rmtree(workdir, ignore_errors=True)


# ---------------------------------------------------------------------------- test audio


def speech_wav(path: Path, text: str, rate: int = 16000, channels: int = 1) -> Path:
    """espeak-ng speech converted by sox to the given rate and channel count."""
    espeak = need_tool("espeak-ng")
    sox = need_tool("sox")
    raw = path.with_suffix(".espeak.wav")
    subprocess.run([espeak, "-w", str(raw), text], check=True, capture_output=True)
    subprocess.run([sox, str(raw), "-r", str(rate), "-c", str(channels), str(path)], check=True, capture_output=True)
    raw.unlink()
    return path


def sox_wav(path: Path, *effects: str, rate: int = 16000, seconds: float = 5.0) -> Path:
    """A synthetic signal from sox, e.g. sox_wav(p, 'synth', '3', 'sine', '1000')."""
    sox = need_tool("sox")
    subprocess.run([sox, "-n", "-r", str(rate), "-c", "1", "-b", "16", str(path), *effects], check=True, capture_output=True)
    return path


@pytest.fixture
def make_speech(tmp_path: Path):
    counter = iter(range(10_000))

    def factory(text: str, rate: int = 16000, channels: int = 1) -> Path:
        return speech_wav(tmp_path / f"speech{next(counter)}.wav", text, rate, channels)

    return factory


def ncc(a: np.ndarray, b: np.ndarray) -> tuple[float, int]:
    """Best normalised cross-correlation of b (reference) inside a, and its lag."""
    if len(a) < len(b):
        a = np.concatenate([a, np.zeros(len(b) - len(a), dtype=a.dtype)])
    c = np.correlate(a, b, mode="valid")
    k = int(np.argmax(np.abs(c)))
    seg = a[k : k + len(b)]
    denom = float(np.linalg.norm(seg) * np.linalg.norm(b)) or 1.0
    return float(np.dot(seg, b) / denom), k


# ---------------------------------------------------------------------------- tiny models


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A tiny random-weight Qwen2-Audio checkpoint (model, processor, tokenizer) on disk."""
    from monitor.testing.tiny.qwen2_audio import build

    out = tmp_path_factory.mktemp("tiny-qwen2-audio")
    build(out, size="tiny")
    return out


@pytest.fixture(scope="module")
def engine(tiny_model_dir):
    """The engine over the tiny Qwen2-Audio, loaded once per module (tests/engine_support.fresh copies it)."""
    from monitor.engine.local.engine import Engine
    from monitor.engine.settings import ModelSettings

    return Engine.load(ModelSettings(path=tiny_model_dir))


@pytest.fixture(scope="session")
def tiny_salmonn_dir(tmp_path_factory) -> Path:
    """A tiny random SALMONN in the released layout: checkpoint.pth, beats.pt, whisper/, llm/."""
    from monitor.testing.tiny.salmonn import build

    return build(tmp_path_factory.mktemp("tiny-salmonn"))


def salmonn_model_section(folder: Path) -> dict:
    """The `model:` section that runs the tiny SALMONN in `folder` (model.backend: salmonn)."""
    return {"backend": "salmonn", "device": "cpu",
            "salmonn": {"checkpoint": str(folder / "checkpoint.pth"), "beats": str(folder / "beats.pt"),
                        "whisper": str(folder / "whisper"), "llm": str(folder / "llm")}}
