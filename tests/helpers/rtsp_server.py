"""A real RTSP camera on 127.0.0.1: GStreamer's RTSP server with H.264 video and AAC audio.

Two halves in one file:

- run as a script with the *system* python3 (the one that has `gi`; the project's venv does
  not), it serves `rtsp://127.0.0.1:PORT/cam`: a live test pattern plus the audio of a WAV the
  test made, optionally behind basic auth. Every client gets its own pipeline, so the audio
  always starts at the beginning of the WAV.
- imported by the tests (stdlib only), `RtspServer` starts that script on a port, waits until it
  accepts connections, and can kill it, restart it on the same port, freeze and thaw it.

    /usr/bin/python3 tests/helpers/rtsp_server.py --port 8554 --wav x.wav [--user u --password p]
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

SYSTEM_PYTHON = "/usr/bin/python3"

VIDEO = ("videotestsrc is-live=true pattern=ball ! video/x-raw,width=320,height=240,framerate=15/1 ! "
         "x264enc tune=zerolatency speed-preset=ultrafast bitrate=300 key-int-max=30 ! "
         "rtph264pay name=pay0 pt=96 config-interval=1")
AUDIO = ("filesrc location={wav} ! wavparse ! audioconvert ! audioresample ! avenc_aac bitrate=64000 ! "
         "rtpmp4gpay name=pay1 pt=97")


def serve(port: int, wav: str, path: str, user: str | None, password: str | None) -> None:
    """The server itself (system python3 + gi)."""
    import gi

    gi.require_version("Gst", "1.0")
    gi.require_version("GstRtspServer", "1.0")
    from gi.repository import GLib, Gst, GstRtspServer

    Gst.init(None)
    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(str(port))
    factory = GstRtspServer.RTSPMediaFactory()
    factory.set_launch(f"( {VIDEO}  {AUDIO.format(wav=wav)} )")
    factory.set_shared(False)
    if user is not None:
        auth = GstRtspServer.RTSPAuth()
        token = GstRtspServer.RTSPToken()
        token.set_string(GstRtspServer.RTSP_TOKEN_MEDIA_FACTORY_ROLE, "camera-user")
        auth.add_basic(GstRtspServer.RTSPAuth.make_basic(user, password or ""), token)
        server.set_auth(auth)
        permissions = GstRtspServer.RTSPPermissions()
        permissions.add_role_from_structure(Gst.Structure.new_from_string(
            "camera-user, media.factory.access=(boolean)true, media.factory.construct=(boolean)true"))
        factory.set_permissions(permissions)
    server.get_mount_points().add_factory(path, factory)
    if server.attach(None) == 0:
        sys.exit(f"cannot listen on 127.0.0.1:{port}")
    print(f"ready rtsp://127.0.0.1:{port}{path}", flush=True)
    loop = GLib.MainLoop()
    signal.signal(signal.SIGTERM, lambda *_: loop.quit())
    loop.run()


def have_gst_rtsp() -> bool:
    """Whether the system python3 has GStreamer's RTSP server and the elements the stream uses."""
    if not os.path.exists(SYSTEM_PYTHON):
        return False
    probe = ("import gi; gi.require_version('Gst','1.0'); gi.require_version('GstRtspServer','1.0');"
             "from gi.repository import Gst, GstRtspServer; Gst.init(None);"
             "import sys; sys.exit(0 if all(Gst.ElementFactory.find(e) for e in "
             "['videotestsrc','x264enc','rtph264pay','wavparse','avenc_aac','rtpmp4gpay']) else 1)")
    return subprocess.run([SYSTEM_PYTHON, "-c", probe], capture_output=True, check=False).returncode == 0


class RtspServer:
    """Controls one server process; `kill()` + `start()` keep the port (what a camera reboot looks like)."""

    def __init__(self, wav: Path, port: int, user: str | None = None, password: str | None = None,
                 path: str = "/cam", log: Path | None = None):
        self.wav, self.port, self.user, self.password, self.path = wav, port, user, password, path
        self.log = log or wav.with_name(f"rtsp-{port}.log")
        self.proc: subprocess.Popen | None = None

    def url(self, user: str | None = None, password: str | None = None) -> str:
        """The stream URL, with these credentials (default: the server's own)."""
        user = self.user if user is None else user
        password = self.password if password is None else password
        cred = f"{user}:{password}@" if user is not None else ""
        return f"rtsp://{cred}127.0.0.1:{self.port}{self.path}"

    def start(self, timeout: float = 15.0) -> RtspServer:
        assert self.proc is None or self.proc.poll() is not None, "server already running"
        args = [SYSTEM_PYTHON, __file__, "--port", str(self.port), "--wav", str(self.wav), "--path", self.path]
        if self.user is not None:
            args += ["--user", self.user, "--password", self.password or ""]
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"RTSP server exited: {self.log.read_text(errors='replace')[-2000:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return self
            except OSError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"RTSP server not listening on {self.port} after {timeout}s") from None
                time.sleep(0.05)

    def kill(self) -> None:
        """SIGKILL: the connection drops without a TEARDOWN, like a camera losing power."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        self.proc = None

    def freeze(self) -> None:
        """SIGSTOP: the TCP connection stays up and nothing more arrives (a hung camera)."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--wav", required=True)
    parser.add_argument("--path", default="/cam")
    parser.add_argument("--user")
    parser.add_argument("--password")
    args = parser.parse_args()
    serve(args.port, args.wav, args.path, args.user, args.password)


if __name__ == "__main__":
    main()
