"""`audio-monitor devices`: the audio input devices PortAudio sees."""

from __future__ import annotations

import argparse
import sys
from typing import Any


def add_parser(sub: Any) -> None:
    sub.add_parser("devices", help="list audio input devices")


def run(_args: argparse.Namespace) -> int:
    from monitor.audio.devices import format_devices, list_input_devices

    try:
        print(format_devices(list_input_devices()))
    except OSError as exc:
        print(f"audio: cannot load PortAudio ({exc}); install libportaudio2", file=sys.stderr)
        return 1
    return 0
