"""Serving the page: uvicorn on its own thread and event loop, fed by a `Hub`.

The socket is bound by the caller's thread, so a port in use is one line at start (and the
real port of `port: 0` is known at once); the loop thread only serves it.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
from pathlib import Path

from monitor.configtypes import read_secret
from monitor.web.app import Controls, build_app
from monitor.web.hosts import HostPolicy
from monitor.web.hub import Hub
from monitor.web.settings import WebSettings

log = logging.getLogger(__name__)


class WebError(Exception):
    """A problem in the `web:` settings found at start; the message names the key to fix."""


def read_web_password(settings: WebSettings) -> str | None:
    """The page's password; WebError (one line) when it is configured but cannot be read, or is empty."""
    try:
        password = read_secret(settings.password_file, settings.password_env, "web", "the web page's password")
    except ValueError as exc:
        raise WebError(str(exc)) from None
    if password is not None and not password.strip():  # never a login of `admin:` and nothing
        where = (f"web.password_file {settings.password_file}: its first line is empty"
                 if settings.password_file is not None
                 else f"web.password_env: the environment variable {settings.password_env} is empty")
        raise WebError(f"{where}; give the page a password there (or, on loopback only, remove the setting)")
    return password


class WebServer:
    """The page on `host:port`, until `stop()`."""

    def __init__(self, hub: Hub, controls: Controls | None, settings: WebSettings, password: str | None,
                 recording: Path | None = None):
        self.hub = hub
        self.settings = settings
        hosts = HostPolicy(settings.host, settings.allowed_hosts)
        self.app = build_app(hub, controls, hosts, username=settings.username, password=password, recording=recording)
        self.locked = password is not None
        self.port: int | None = None
        self._server = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host = self.settings.host
        shown = f"[{host}]" if ":" in host else host
        return f"http://{shown}:{self.port}/"

    def start(self) -> str:
        """Bind and serve; the URL. OSError when the address cannot be bound (the caller says what to set)."""
        import uvicorn

        host = self.settings.host.strip("[]")
        sock = socket.create_server((host, self.settings.port), family=socket.AF_INET6 if ":" in host else socket.AF_INET,
                                    backlog=128)
        self.port = int(sock.getsockname()[1])
        config = uvicorn.Config(self.app, log_config=None, log_level="warning", access_log=False, lifespan="off",
                                timeout_graceful_shutdown=1, ws="none")
        self._server = uvicorn.Server(config)
        ready = threading.Event()

        async def serve() -> None:
            self.hub.attach(asyncio.get_running_loop())
            ready.set()
            await self._server.serve(sockets=[sock])

        def run() -> None:
            try:
                asyncio.run(serve())
            except Exception:  # noqa: BLE001 - the page is not worth the alarms
                log.exception("web: the page server stopped")
            finally:
                ready.set()
                sock.close()

        self._thread = threading.Thread(target=run, name="web", daemon=True)
        self._thread.start()
        ready.wait(10)
        return self.url

    def stop(self, timeout: float = 3.0) -> None:
        self.hub.close()
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():  # a slow client or a loaded machine: stop waiting for connections
                self._server.force_exit = True
                self._thread.join(5.0)
            if self._thread.is_alive():
                log.warning("web: the page server did not stop within %.0f s", timeout + 5.0)
