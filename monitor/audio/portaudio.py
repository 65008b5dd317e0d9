"""The process's one PortAudio: its device list, and who may re-read it, when.

PortAudio reads the list of devices once, when it is initialised, and terminating it closes every
stream of the process — other rooms' microphones included, which then fail with "Invalid stream
pointer". So a device that was missing and comes back (a USB microphone plugged in) is only seen
after a re-initialisation, and a re-initialisation must never happen under someone else's stream.

`PORTAUDIO` owns that lifetime. Streams are opened and closed through it (`session`, `opened`,
`close`), and a microphone that cannot find or open its device asks it to `refresh`:

- with no input stream open, PortAudio is re-initialised at once (cheap, in this process);
- with other streams open, the device list is read in a child process, which touches nothing
  here. Only when the child sees the wanted device and this process does not (or sees it under
  another name) is PortAudio restarted, in turn: each open stream's owner notices `restarting`,
  closes its stream and waits; PortAudio re-initialises; they reopen at once (the short gap is
  counted as lost audio). A device that is still missing costs the others nothing.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from monitor.audio.base import SourceError

log = logging.getLogger(__name__)


class DeviceNotFound(SourceError):
    """The configured input device is not in the device list (`short`: for the hearing detail)."""

    def __init__(self, message: str, device: int | str):
        super().__init__(message)
        self.short = f"device not found: {device!r}"


def resolve_device(device: int | str | None, sd: Any) -> int | None:
    """A device index from an index, a name substring or None (system default input)."""
    if device is None:
        return None
    devices = sd.query_devices()
    inputs = [(i, d) for i, d in enumerate(devices) if d["max_input_channels"] > 0]
    if isinstance(device, int) or (isinstance(device, str) and device.isdigit()):
        idx = int(device)
        if any(i == idx for i, _ in inputs):
            return idx
        raise DeviceNotFound(f"audio.device: no input device with index {idx}; run `audio-monitor devices` to list them",
                             device)
    wanted = device.lower()
    exact = [i for i, d in inputs if d["name"].lower() == wanted]
    matches = exact or [i for i, d in inputs if wanted in d["name"].lower()]
    if not matches:
        names = ", ".join(repr(d["name"]) for _, d in inputs) or "none"
        raise DeviceNotFound(f"audio.device: no input device matches {device!r} (inputs: {names}); "
                             "run `audio-monitor devices`", device)
    return matches[0]


class _Listed:
    """A device list read elsewhere, answering `query_devices` as sounddevice does (for `resolve_device`)."""

    def __init__(self, devices: list[dict[str, Any]]):
        self._devices = devices

    def query_devices(self) -> list[dict[str, Any]]:
        return self._devices


def _chosen(device: int | str | None, devices: list[dict[str, Any]], default: str | None) -> str | None:
    """The name of the device `device` picks from `devices`, or None when it picks none."""
    if device is None:
        return default
    try:
        index = resolve_device(device, _Listed(devices))
    except SourceError:
        return None
    return None if index is None else str(devices[index]["name"])


_LIST_INPUTS = """\
import json, sounddevice as sd
devices = [{"name": d["name"], "max_input_channels": d["max_input_channels"]} for d in sd.query_devices()]
try:
    default = sd.query_devices(kind="input")["name"]
except Exception:
    default = None
print(json.dumps({"devices": devices, "default": default}))
"""


def devices_elsewhere(timeout: float = 10.0) -> tuple[list[dict[str, Any]], str | None] | None:
    """The input devices a fresh PortAudio sees now, read in a child process; None if it could not tell."""
    try:
        done = subprocess.run([sys.executable, "-c", _LIST_INPUTS], capture_output=True, text=True, timeout=timeout,
                              env=os.environ.copy(), stdin=subprocess.DEVNULL, check=False)
        listed = json.loads(done.stdout.strip().splitlines()[-1])
        return list(listed["devices"]), listed["default"]
    except (OSError, subprocess.SubprocessError, ValueError, IndexError, KeyError, TypeError) as exc:
        log.debug("audio: cannot read the device list in a child process (%s)", exc)
        return None


class PortAudio:
    """PortAudio's lifetime in this process (one instance: `PORTAUDIO`)."""

    RESTART_WAIT = 5.0  # seconds the other streams get to close for a restart before it is given up

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._open: dict[int, str] = {}  # id(stream) -> its owner, for each input stream open
        self._restarting = False
        self._refused = ""  # the streams that kept the last restart from happening (said once)

    @staticmethod
    def module() -> Any:
        """The sounddevice module; OSError when the PortAudio library is missing."""
        import sounddevice

        return sounddevice

    @property
    def restarting(self) -> bool:
        """True while a restart waits for the open streams to close: their owners close them now."""
        return self._restarting

    @contextmanager
    def session(self) -> Iterator[Any]:
        """Hold PortAudio still (no restart) for device queries and opening a stream; yields sounddevice."""
        sd = self.module()
        with self._cond:
            self._cond.wait_for(lambda: not self._restarting, timeout=self.RESTART_WAIT * 2)
            yield sd

    def opened(self, stream: Any, owner: str) -> None:
        """A stream was opened in a `session`: no restart may happen until it is `close`d."""
        with self._cond:
            self._open[id(stream)] = owner

    def close(self, stream: Any, timeout: float = 2.0) -> bool:
        """Abort and close a stream without waiting on it for long; True when it closed in time.

        When the sound server dies under a stream, PortAudio can block in abort/close; the caller
        must go on, so the closing happens in a throwaway thread. Until it has closed, the stream
        counts as open: terminating PortAudio under it is not safe.
        """
        def close() -> None:
            try:
                stream.abort()
                stream.close()
            except Exception:  # noqa: BLE001 - a dead stream may refuse either; it is dropped anyway
                pass
            with self._cond:
                self._open.pop(id(stream), None)
                self._cond.notify_all()

        closer = threading.Thread(target=close, name="capture-close", daemon=True)
        closer.start()
        closer.join(timeout)
        if closer.is_alive():
            log.warning("audio: the old input stream did not close within %.0fs; left behind", timeout)
            return False
        return True

    def wait_restarted(self, timeout: float) -> None:
        """Until a restart in progress is over (or `timeout`)."""
        with self._cond:
            self._cond.wait_for(lambda: not self._restarting, timeout=timeout)

    def reinitialise(self, timeout: float = 10.0) -> bool:
        """Re-read the device list now, once no input stream is open (for up to `timeout`); True if re-read.

        For whoever changed the sound server under this process (a test pointing it at another
        PulseAudio): never under a stream, nor under a stream being opened in a `session`.
        """
        sd = self.module()
        with self._cond:
            if not self._cond.wait_for(lambda: not self._open and not self._restarting, timeout=timeout):
                log.warning("audio: cannot re-read the device list: input streams of %s are still open",
                            ", ".join(sorted(set(self._open.values()))))
                return False
            self._reinitialise(sd)
            return True

    def refresh(self, device: int | str | None, who: str) -> bool:
        """Re-read the device list for `who`, whose `device` was not found or did not open; True if re-read.

        Never under another stream unless the device has really appeared (see the module's doc).
        """
        sd = self.module()
        with self._cond:
            if not self._open and not self._restarting:
                self._reinitialise(sd)
                return True
            with_streams = sorted(set(self._open.values()))
            here = self._listing(sd)
        there = devices_elsewhere()
        if there is None or here is None:
            return False
        wanted = _chosen(device, *there)
        if wanted is None or wanted == _chosen(device, *here):
            return False  # still missing (or listed here as it is there): nothing to gain
        log.info("audio: %s's device %r appeared; re-reading the device list: the input streams of %s pause for a moment",
                 who, wanted, ", ".join(with_streams))
        return self._restart(sd)

    def _restart(self, sd: Any) -> bool:
        with self._cond:
            if self._restarting:
                return False
            self._restarting = True
            try:
                if not self._cond.wait_for(lambda: not self._open, timeout=self.RESTART_WAIT):
                    held = ", ".join(sorted(set(self._open.values())))
                    if held != self._refused:  # once, not at every retry of the device that waits
                        log.warning("audio: cannot re-read the device list now: input streams of %s did not close; "
                                    "tried again at the next retry", held)
                    self._refused = held
                    return False
                self._refused = ""
                self._reinitialise(sd)
                return True
            finally:
                self._restarting = False
                self._cond.notify_all()

    def _reinitialise(self, sd: Any) -> None:
        """Terminate and initialise PortAudio (the caller holds the lock and no stream is open)."""
        started = time.monotonic()
        try:
            sd._terminate()
            sd._initialize()
        except Exception as exc:  # noqa: BLE001 - PortAudioError: the next query or open says what is wrong
            log.debug("audio: re-initialising PortAudio failed (%s)", exc)
        log.debug("audio: device list re-read in %.2fs", time.monotonic() - started)

    @staticmethod
    def _listing(sd: Any) -> tuple[list[dict[str, Any]], str | None] | None:
        try:
            devices = [{"name": d["name"], "max_input_channels": d["max_input_channels"]} for d in sd.query_devices()]
        except Exception:  # noqa: BLE001 - PortAudio not initialised after a failed re-init
            return None
        try:
            default = sd.query_devices(kind="input")["name"]
        except Exception:  # noqa: BLE001 - no default input
            default = None
        return devices, default


PORTAUDIO = PortAudio()
