"""Listing capture devices (`audio-monitor devices`)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class InputDevice:
    index: int
    name: str
    channels: int
    default_rate: float
    hostapi: str
    is_default: bool


def list_input_devices() -> list[InputDevice]:
    """Every device PortAudio can record from; raises OSError when PortAudio is missing."""
    import sounddevice as sd

    try:
        default_in = sd.default.device[0]
        if default_in is None or default_in < 0:
            default_in = sd.query_devices(kind="input")["index"]
    except Exception:
        default_in = -1
    hostapis = sd.query_hostapis()
    out = []
    for i, d in enumerate(sd.query_devices()):
        if d["max_input_channels"] > 0:
            out.append(InputDevice(i, d["name"], int(d["max_input_channels"]), float(d["default_samplerate"]),
                                   hostapis[d["hostapi"]]["name"], i == default_in))
    return out


def format_devices(devices: list[InputDevice]) -> str:
    if not devices:
        return "no input devices found (is a sound card or PulseAudio/PipeWire available to this user?)"
    rows = [("", "index", "name", "channels", "rate", "host api")]
    for d in devices:
        rows.append(("*" if d.is_default else "", str(d.index), d.name, str(d.channels), f"{d.default_rate:g}", d.hostapi))
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in rows]
    return "\n".join(lines) + "\n(* = system default input)"
