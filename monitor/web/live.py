"""The daemon's page: a `Hub` fed as one more sink (`sink`), its server, and the controls it offers.

The page's mute, rule switches, labels and reload go through the daemon exactly as the MQTT commands do
(queued for the main loop), so a room muted or a rule switched off from the page is so on MQTT too
and remembered across restarts.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import Future

from monitor.labels.requests import LabelRequest, Outcome
from monitor.web.hub import Hub
from monitor.web.server import WebServer, read_web_password
from monitor.web.settings import WebSettings
from monitor.web.sink import WebSink

log = logging.getLogger(__name__)

Command = Callable[[str, str, str], None]


class LivePage:
    """Everything the daemon needs of its page; WebError from the constructor when the password cannot be read."""

    def __init__(self, settings: WebSettings, on_command: Command, wake: Callable[[], None],
                 on_label: Callable[[LabelRequest], Future[Outcome]] | None = None):
        self.settings = settings
        self.hub = Hub()
        self.sink = WebSink(self.hub)
        self._on_command = on_command
        self._wake = wake
        self._on_label = on_label
        self._server = WebServer(self.hub, self, settings, read_web_password(settings))
        self.url: str | None = None

    # ------------------------------------------------------------------ Controls (the server's thread)

    def mute(self, target: str, on: bool) -> None:
        self._on_command("mute", "ON" if on else "OFF", target)
        self._wake()

    def reload(self) -> None:
        self._on_command("reload", "", "")
        self._wake()

    def enable(self, room: str, rule: str, on: bool) -> None:
        self._on_command("enabled", "ON" if on else "OFF", f"{room}/{rule}")
        self._wake()

    def label(self, request: LabelRequest) -> Future[Outcome]:
        """An alert marked right or wrong, or a sound missed: carried out by the main loop, its outcome on the future."""
        if self._on_label is None:
            future: Future[Outcome] = Future()
            future.set_result(Outcome(409, "labels are not kept by this daemon"))
            return future
        future = self._on_label(request)
        self._wake()
        return future

    # ------------------------------------------------------------------ the daemon's main thread

    def start(self) -> None:
        """Serve; a port in use is logged as one line and the daemon listens on without its page."""
        s = self.settings
        try:
            self.url = self._server.start()
        except OSError as exc:
            log.error("web: cannot listen on %s:%d (%s); set web.port, or web.enabled: false", s.host, s.port,
                      exc.strerror or exc)
            return
        login = f" (user {s.username}, password from web.password_file/password_env)" if self._server.locked else ""
        log.info("web page on %s%s", self.url, login)

    def stop(self) -> None:
        self._server.stop()
