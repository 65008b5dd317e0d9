"""The daemon's page: a `Hub` fed as one more sink, its server, and the controls it offers.

The page's mute and reload go through the daemon exactly as the MQTT commands do (queued for the
main loop), so a room muted from the page is muted on MQTT too and remembered across restarts.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from monitor.web.hub import Hub, WebSink, rule_info
from monitor.web.server import WebServer, read_web_password
from monitor.web.settings import WebSettings

log = logging.getLogger(__name__)

STATUS_EVERY = 1.0  # seconds between status updates on the page

Command = Callable[[str, str, str], None]


class LivePage:
    """Everything the daemon needs of its page; WebError from the constructor when the password cannot be read."""

    def __init__(self, settings: WebSettings, on_command: Command, wake: Callable[[], None]):
        self.settings = settings
        self.hub = Hub()
        self.sink = WebSink(self.hub)
        self._on_command = on_command
        self._wake = wake
        self._server = WebServer(self.hub, self, settings, read_web_password(settings))
        self._last_status = 0.0
        self.url: str | None = None

    # ------------------------------------------------------------------ Controls (the server's thread)

    def mute(self, target: str, on: bool) -> None:
        self._on_command("mute", "ON" if on else "OFF", target)
        self._wake()

    def reload(self) -> None:
        self._on_command("reload", "", "")
        self._wake()

    # ------------------------------------------------------------------ the daemon's main thread

    def add_room(self, room: Any) -> None:
        """An `ActiveRoom`: its panel, with its rules and clips folder."""
        self.hub.add_room(room.id, room.name, room.clips.folder)
        self.show_rules(room)

    def show_rules(self, room: Any) -> None:
        rules = room.pipeline.rules
        self.hub.set_rules(room.id, rule_info(rules.ruleset), rules.on_states(), time.time())

    def show_status(self, status: Callable[[], dict[str, Any]], force: bool = False) -> None:
        """At most once a second unless `force` (a mute just changed); `status` is only called when due."""
        now = time.monotonic()
        if force or now - self._last_status >= STATUS_EVERY:
            self._last_status = now
            self.hub.set_status(status())

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
