"""Running the real daemon in tests: configs, rule files, a subprocess with its log, a notify socket."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import yaml

from tests.conftest import REPO, speech_wav

RATE = 16_000

# A yes/no rule that fires whenever something is audible: threshold 0 makes any score a hit,
# the level gate makes silence a miss. The model's weights are random; the gate decides.
LOUD_RULES = """\
rules:
  - id: loud
    name: Something audible
    ask: Does this recording contain any sound at all? Answer yes or no.
    threshold: 0.0
    release: 0.0
    patience: 1
    hold: 0s
    cooldown: 0s
    gate: {min_dbfs: -45}
    device_class: sound
"""

# A transcript per utterance (a few tokens: the model is random) and a match on any word of it.
TEXT_RULES = """\
  - id: speech
    name: Speech
    answer: text
    ask: What is being said? Write down the words exactly.
    max_new_tokens: 6
  - id: any_words
    from: speech
    match: '\\w'
"""


def write_config(tmp_path: Path, model_dir: Path, broker_port: int, *, source: str = "mic",
                 rules: str = LOUD_RULES, node: str = "test_node", extra: dict | None = None) -> Path:
    rules_dir = tmp_path / "rules"
    rules_dir.mkdir(exist_ok=True)
    (rules_dir / "rules.yaml").write_text(rules)
    config = {
        "node_id": node,
        "audio": {"source": source, "buffer_seconds": 30, "realtime": True},
        "windows": {"length": "2s", "hop": "1s"},
        "model": {"path": str(model_dir), "device": "cpu"},
        "mqtt": {"host": "127.0.0.1", "port": broker_port, "topic_prefix": "am"},
        "rules": str(rules_dir),
        "state_dir": str(tmp_path / "state"),
        "metrics": {"port": 0},
        "web": {"port": 0},  # a free port each: daemons of parallel tests never collide on 8765
        "clips": {"pre_roll": "1s", "post_roll": "1s"},
        "stop_timeout": "5s",
        "log": {"level": "debug"},
    }
    for key, value in (extra or {}).items():
        node_ = config
        *parents, last = key.split(".")
        for p in parents:
            node_ = node_.setdefault(p, {})
        node_[last] = value
    path = tmp_path / "monitor.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


class DaemonProcess:
    """`python -m monitor run -c CONFIG` with its stderr collected in the background.

    `program`: what to run instead of `python -m monitor` (a satellite's installed `audio-monitor`)."""

    def __init__(self, config: Path, env: dict | None = None, args: tuple[str, ...] = (),
                 program: tuple[str, ...] = (sys.executable, "-m", "monitor")):
        self.lines: list[str] = []
        self._cond = threading.Condition()
        self.proc = subprocess.Popen(
            [*program, "run", "-c", str(config), *args],
            cwd=REPO, env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._cond:
                self.lines.append(line.rstrip("\n"))
                self._cond.notify_all()

    @property
    def output(self) -> str:
        with self._cond:
            return "\n".join(self.lines)

    def wait_log(self, text: str, timeout: float = 60.0) -> str:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for line in self.lines:
                    if text in line:
                        return line
                if self.proc.poll() is not None and not self._reader.is_alive():
                    raise AssertionError(f"daemon exited ({self.proc.returncode}) before logging {text!r}:\n{self.output}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"daemon did not log {text!r} within {timeout}s:\n" + "\n".join(self.lines[-40:]))
                self._cond.wait(min(left, 0.5))

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def wait(self, timeout: float = 30.0) -> int:
        code = self.proc.wait(timeout)
        self._reader.join(5)
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.proc.returncode


class NotifySocket:
    """A datagram socket standing in for systemd's NOTIFY_SOCKET; records every message."""

    def __init__(self, path: Path):
        self.path = str(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.settimeout(0.2)
        self.messages: list[tuple[float, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            for line in data.decode().splitlines():
                self.messages.append((time.monotonic(), line))

    def seen(self, prefix: str) -> list[float]:
        return [t for t, m in list(self.messages) if m.startswith(prefix)]

    def wait(self, prefix: str, timeout: float = 60.0) -> float:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            hits = self.seen(prefix)
            if hits:
                return hits[0]
            time.sleep(0.05)
        raise TimeoutError(f"no {prefix!r} on the notify socket; got {[m for _, m in self.messages][-10:]}")

    def close(self) -> None:
        self._stop.set()
        self.sock.close()


def events_of(messages: list[tuple[str, bytes, bool]], node: str = "test_node") -> list[dict]:
    out = []
    for topic, payload, _ in messages:
        if topic.startswith(f"am/{node}/") and topic.endswith("/event"):
            out.append(json.loads(payload))
    return out


def talk_file(tmp_path: Path, pattern: list[tuple[str, float]]) -> Path:
    """A recording of silence, noise and speech segments: [("silence", 3), ("speech:text", 0), ...]."""
    rng = np.random.default_rng(7)
    parts = []
    for kind, seconds in pattern:
        if kind == "silence":
            parts.append(np.zeros(int(seconds * RATE), dtype=np.float32))
        elif kind == "noise":
            parts.append((rng.standard_normal(int(seconds * RATE)) * 0.05).astype(np.float32))
        elif kind.startswith("speech:"):
            wav = speech_wav(tmp_path / f"s{len(parts)}.wav", kind[7:])
            parts.append(sf.read(wav, dtype="float32")[0])
    path = tmp_path / "recording.wav"
    sf.write(path, np.concatenate(parts), RATE)
    return path
