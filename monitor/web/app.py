"""The page's HTTP side: the page itself, a live stream (Server-Sent Events), clips, mute, rule switches, labels and reload.

Security, in this order for every request: the `Host:` must name this server (`hosts.py`: a
page that rebinds its own DNS name to this address gets 421, so it can neither read nor press
anything); a password when one is configured (HTTP basic, a constant-time comparison); then,
for the requests that change something (POST only), proof that the page itself sent them: the
browser's `Sec-Fetch-Site` / `Origin` must say same-origin and the request must carry a header a
cross-site form cannot set. Clips come only from a room's clips folder, by a plain file name.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import logging
import re
from collections.abc import AsyncIterator
from concurrent.futures import Future
from importlib import resources
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from monitor.labels.requests import LabelRequest, Outcome, parse_label
from monitor.web.hosts import HostCheck, HostPolicy
from monitor.web.hub import Hub, SlowClient

log = logging.getLogger(__name__)

CSRF_HEADER = "x-audio-monitor"  # the page's fetch() sends it; a cross-site form cannot
CLIP_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*\.(wav|flac|ogg|mp3|m4a)")
STATIC = {"": ("index.html", "text/html; charset=utf-8"), "app.js": ("app.js", "text/javascript; charset=utf-8"),
          "style.css": ("style.css", "text/css; charset=utf-8")}
SWITCH_ID = re.compile(r"[A-Za-z0-9_\-]{1,64}")  # a room or rule id (a topic segment)
MAX_STREAMS = 64  # live pages at once; more get 503
LABEL_WAIT = 10.0  # seconds a label waits for the daemon's main loop


class Controls(Protocol):
    """What the page may ask of the daemon (a finished replay has no controls)."""

    def mute(self, target: str, on: bool) -> None:
        """Like an MQTT mute command: `target` is a room id, or the node id for every room."""
        ...

    def reload(self) -> None:
        ...

    def enable(self, room: str, rule: str, on: bool) -> None:
        """Like an MQTT command on {prefix}/{room}/{rule}/set/enabled: switch a rule on or off."""
        ...

    def label(self, request: LabelRequest) -> Future[Outcome]:
        """Like {prefix}/{room}/{rule}/set/label: an alert marked right or wrong, or a sound missed."""
        ...


class BasicAuth:
    """HTTP basic auth on every path (the page, its stream, clips, commands)."""

    def __init__(self, app: ASGIApp, username: str, password: str):
        self.app = app
        self.expected = base64.b64encode(f"{username}:{password}".encode()).decode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            header = dict(scope["headers"]).get(b"authorization", b"").decode("latin-1")
            scheme, _, given = header.partition(" ")
            if scheme.lower() != "basic" or not hmac.compare_digest(given.strip().encode(), self.expected.encode()):
                response = PlainTextResponse("authentication required\n", status_code=401,
                                             headers={"WWW-Authenticate": 'Basic realm="audio-monitor", charset="UTF-8"'})
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def same_origin(request: Request) -> bool:
    """Whether a state-changing request really comes from this page (not another site's form or script)."""
    if request.headers.get(CSRF_HEADER) != "1":
        return False
    site = request.headers.get("sec-fetch-site")
    if site is not None and site not in ("same-origin", "none"):
        return False
    origin = request.headers.get("origin")
    if origin is not None:
        parts = urlsplit(origin)
        if parts.netloc != request.headers.get("host") or parts.scheme != request.url.scheme:
            return False
    return True


def build_app(hub: Hub, controls: Controls | None, hosts: HostPolicy, *, username: str = "admin",
              password: str | None = None, recording: Path | None = None) -> ASGIApp:
    """The ASGI app answering to `hosts`; `recording`: the audio file a replay's events point into (replay view)."""
    streams = 0

    async def page(request: Request) -> Response:
        name, media = STATIC.get(request.path_params.get("name", ""), (None, None))
        if name is None:
            return PlainTextResponse("not found\n", status_code=404)
        body = resources.files("monitor.web").joinpath("static", name).read_bytes()
        return Response(body, media_type=media, headers={"Cache-Control": "no-cache"})

    async def state(_request: Request) -> Response:
        return Response(hub.snapshot_json(), media_type="application/json")

    async def stream(request: Request) -> Response:
        nonlocal streams
        if streams >= MAX_STREAMS:
            return PlainTextResponse("too many live pages open\n", status_code=503)

        async def events() -> AsyncIterator[str]:
            nonlocal streams
            streams += 1
            try:
                async for chunk in hub.stream():
                    yield chunk
            except SlowClient as exc:
                log.info("web: dropped a client that fell behind (%s); it reconnects", exc)
            finally:
                streams -= 1

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    async def clip(request: Request) -> Response:
        room = hub.rooms.get(request.path_params["room"])
        name = request.path_params["name"]
        if room is None or room.clips is None or not CLIP_NAME.fullmatch(name):
            return PlainTextResponse("not found\n", status_code=404)
        folder = room.clips.resolve()
        path = (folder / name).resolve()
        if path.parent != folder or not path.is_file():
            return PlainTextResponse("not found\n", status_code=404)
        return FileResponse(path, media_type=_media_type(path))

    async def recording_file(_request: Request) -> Response:
        if recording is None or not recording.is_file():
            return PlainTextResponse("not found\n", status_code=404)
        return FileResponse(recording, media_type=_media_type(recording))

    async def command(request: Request) -> Response:
        if not same_origin(request):
            return PlainTextResponse("cross-site request refused\n", status_code=403)
        if controls is None:
            return PlainTextResponse("a replay has nothing to control\n", status_code=409)
        try:
            body: Any = await request.json()
        except ValueError:
            body = None
        if request.path_params["what"] == "reload":
            controls.reload()
            return JSONResponse({"ok": True})
        if request.path_params["what"] == "mute" and isinstance(body, dict) and isinstance(body.get("on"), bool) \
                and isinstance(body.get("target"), str):
            controls.mute(body["target"], body["on"])
            return JSONResponse({"ok": True})
        if request.path_params["what"] == "enabled" and _switch_body(body):
            controls.enable(body["room"], body["rule"], body["on"])
            return JSONResponse({"ok": True})
        if request.path_params["what"] == "label":
            return await _label(controls, body)
        return PlainTextResponse("bad request\n", status_code=400)

    routes = [
        Route("/", page),
        Route("/static/{name}", page),
        Route("/api/state", state),
        Route("/api/stream", stream),
        Route("/api/{what:str}", command, methods=["POST"]),
        Route("/clips/{room}/{name:path}", clip),
        Route("/recording", recording_file),
    ]
    app: ASGIApp = Starlette(routes=routes)
    if password is not None:
        app = BasicAuth(app, username, password)
    return HostCheck(app, hosts)


async def _label(controls: Controls, body: Any) -> Response:
    """A label: 200 saved, or the daemon's one line with its status (404, 409, 410 clip gone, 503)."""
    request = parse_label(body, *(body.get(k) if isinstance(body, dict) else None for k in ("room", "rule")), "page")
    if isinstance(request, str):
        return PlainTextResponse(f"bad request: {request}\n", status_code=400)
    try:
        outcome = await asyncio.wait_for(asyncio.wrap_future(controls.label(request)), LABEL_WAIT)
    except asyncio.TimeoutError:
        return PlainTextResponse("label not saved: the daemon did not answer in time; try again\n", status_code=503)
    if not outcome.ok:
        return PlainTextResponse(outcome.message + "\n", status_code=outcome.status)
    return JSONResponse({"ok": True, "message": outcome.message})


def _switch_body(body: Any) -> bool:
    """`{"room": id, "rule": id, "on": bool}`, ids that could be topic segments."""
    return (isinstance(body, dict) and isinstance(body.get("on"), bool)
            and all(isinstance(body.get(k), str) and SWITCH_ID.fullmatch(body[k]) for k in ("room", "rule")))


def _media_type(path: Path) -> str:
    return {".wav": "audio/wav", ".flac": "audio/flac", ".ogg": "audio/ogg", ".mp3": "audio/mpeg",
            ".m4a": "audio/mp4"}.get(path.suffix.lower(), "application/octet-stream")
