"""Every expected failure at start is one ERROR line naming the setting and what to do.

The real daemon (`python -m monitor run -c ...`) with one start path broken at a time: the
config, the rules, the device, the model, the MQTT login and TLS files, the web page, state_dir
and the metrics port. A traceback is for bugs; a wrong setting is the user's to fix, so the line
says which one and how, and the exit code is non-zero (systemd counts a failure). A metrics port
that is taken is the exception: the alarms matter more than the endpoint, so the daemon says so
in one line and goes on.
"""

from __future__ import annotations

import signal
import socket
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from tests.daemon_support import LOUD_RULES, DaemonProcess, write_config

RATE = 16_000


def _file(tmp_path: Path, name: str, text: str) -> str:
    (tmp_path / name).write_text(text)
    return str(tmp_path / name)


def _in_a_file(tmp_path: Path) -> str:
    """A path below a regular file: nothing can be created there."""
    return str(Path(_file(tmp_path, "plain-file", "x\n")) / "below")


# (what is broken, setting overrides (a function of tmp_path), what the one line must say)
CASES: list[tuple[str, Callable[[Path], dict], str]] = [
    ("config key", lambda t: {"audio.sourc": "mic"}, "audio.sourc: unknown key (check the spelling"),
    ("config rules path", lambda t: {"rules": str(t / "nowhere")}, "rules: not found: "),
    ("rule", lambda t: {}, "rules[0].threshold: "),
    ("device", lambda t: {"audio.source": "mic", "audio.device": "no such microphone"},
     "audio.device: no input device matches 'no such microphone'"),
    ("model", lambda t: {"model.path": str(t / "no-model")}, "model.path "),
    ("served model", lambda t: {"model.backend": "openai", "model.path": None, "model.name": "m",
                                "model.url": "http://127.0.0.1:9/v1", "model.timeout": "2s"}, "fix model.url"),
    ("mqtt password file", lambda t: {"mqtt.username": "monitor", "mqtt.password_file": str(t / "no-password")},
     "mqtt.password_file "),
    ("mqtt password variable", lambda t: {"mqtt.username": "monitor", "mqtt.password_env": "AM_TEST_UNSET_PASSWORD"},
     "mqtt.password_env: the environment variable AM_TEST_UNSET_PASSWORD is not set; export it"),
    ("mqtt tls ca", lambda t: {"mqtt.tls.ca_file": _file(t, "ca.pem", "not a certificate\n")},
     "give a PEM CA certificate"),
    ("mqtt tls certificate", lambda t: {"mqtt.tls.certfile": _file(t, "cert.pem", "not a certificate\n")},
     "mqtt.tls.certfile "),
    ("web password file", lambda t: {"web.password_file": str(t / "no-password")}, "web.password_file "),
    ("state_dir", lambda t: {"state_dir": _in_a_file(t)}, "state_dir: cannot write to "),
]
HINTS = {  # what to do, per case (besides naming the setting)
    "config key": "see the config reference", "config rules path": "name a rule file or a folder",
    "rule": "must be between 0 and 1", "device": "run `audio-monitor devices`", "model": "point it at a folder",
    "served model": "start the model server", "mqtt password file": "create it holding the broker password",
    "mqtt password variable": "EnvironmentFile=", "mqtt tls ca": "mqtt.tls.ca_file",
    "mqtt tls certificate": "give PEM files", "web password file": "create it",
    "state_dir": "point state_dir elsewhere",
}


def _problems(daemon: DaemonProcess) -> list[str]:
    return [line for line in daemon.lines if " ERROR " in line]


@pytest.mark.parametrize("what, change, expected", CASES, ids=[c[0] for c in CASES])
def test_each_failure_at_start_is_one_error_line_naming_the_setting(tiny_model_dir, tmp_path, what, change, expected):
    rules = LOUD_RULES.replace("threshold: 0.0", "threshold: 2.0") if what == "rule" else LOUD_RULES
    wav = tmp_path / "quiet.wav"
    sf.write(wav, np.zeros(RATE, dtype=np.float32), RATE)
    config = write_config(tmp_path, tiny_model_dir, 9, source=f"file:{wav}", rules=rules,
                          extra={"log.level": "info", **change(tmp_path)})
    daemon = DaemonProcess(config)
    try:
        code = daemon.wait(120)
    finally:
        daemon.kill()
    assert code == 1, daemon.output
    assert "Traceback" not in daemon.output, daemon.output
    problems = _problems(daemon)
    assert len(problems) == 1, daemon.output
    assert expected in problems[0] and HINTS[what] in problems[0], problems[0]


def test_a_taken_metrics_port_is_one_error_line_and_the_monitor_goes_on(broker, tiny_model_dir, tmp_path):
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    wav = tmp_path / "quiet.wav"
    sf.write(wav, np.zeros(60 * RATE, dtype=np.float32), RATE)
    config = write_config(tmp_path, tiny_model_dir, broker.port, source=f"file:{wav}",
                          extra={"log.level": "info", "metrics.port": taken.getsockname()[1]})
    daemon = DaemonProcess(config)
    try:
        daemon.wait_log("listening:", timeout=120)
        daemon.signal(signal.SIGTERM)
        code = daemon.wait(60)
    finally:
        daemon.kill()
        taken.close()
    assert code == 0, daemon.output
    (line,) = _problems(daemon)
    assert "metrics: cannot listen on 127.0.0.1:" in line and "set metrics.port or metrics.enabled: false" in line
    assert "Traceback" not in daemon.output
