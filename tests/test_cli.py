"""The command line as a user runs it: a separate process, exit codes, one line per problem."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO


def cli(*args: str, env: dict | None = None, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "monitor", *args], capture_output=True, text=True, cwd=cwd,
                          env={**os.environ, **(env or {})}, timeout=120)


def test_check_reports_three_problems_with_lines(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("node_id: kitchen\naudio:\n  sourc: mic\n  channels: two\nwindows:\n  hop: -2s\n")
    out = cli("check", "-c", str(bad))
    assert out.returncode == 1
    lines = out.stderr.strip().splitlines()
    assert lines == [
        f"{bad}:3: audio.sourc: unknown key (check the spelling; see the config reference in README.md)",
        f"{bad}:4: audio.channels: Input should be a valid integer, unable to parse string as an integer (got 'two')",
        f"{bad}:6: windows.hop: duration must not be negative (got '-2s')",
    ]
    assert "Traceback" not in out.stderr


def test_check_passes_on_every_shipped_config():
    for config in sorted((REPO / "configs").glob("*.yaml")):
        out = cli("check", "-c", str(config))
        assert out.returncode == 0, (config, out.stderr)
        assert "OK" in out.stdout


def test_check_with_set_override():
    out = cli("check", "-c", "configs/monitor.yaml", "--set", "windows.hop=1s", "--set", "mqtt.port=0")
    assert out.returncode == 1
    assert out.stderr.strip() == "--set: mqtt.port: Input should be greater than or equal to 1 (got 0)"


def test_version_and_help():
    from monitor import __version__

    assert cli("--version").stdout.strip() == f"audio-monitor {__version__}"
    out = cli()
    assert out.returncode == 2 and "run" in out.stdout and "check" in out.stdout


def test_devices_lists_the_virtual_microphone(vmic):
    out = cli("devices", env=vmic.env)
    assert out.returncode == 0, out.stderr
    assert "pulse" in out.stdout and "index" in out.stdout and "(* = system default input)" in out.stdout
    assert any(line.startswith("*") for line in out.stdout.splitlines())
