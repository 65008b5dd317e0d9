"""HTTP to an OpenAI-compatible model server: the API key, TLS, timeouts, and backing off.

Kept apart from the backend's scoring so that what can go wrong on the wire is decided in one
place: every failure of one request becomes a `ServerError` whose text is one line, and says
whether it concerns the server (down, timing out, overloaded, refusing the key) or this request
alone (a 400 about one window's audio). A server-side failure opens the `Backoff`: for a short,
growing pause every request fails at once instead of each window waiting a whole timeout for a
server that is known to be away; the first request after the pause tries again, and the first
success closes it.

The API key goes into the Authorization header of the client and nowhere else: no message,
log line or status here ever contains it (httpx's own request logs are kept at WARNING).
"""

from __future__ import annotations

import logging
import os
import ssl
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from monitor.audio.redact import redact_url, scrub
from monitor.engine.errors import ModelLoadError, first_line
from monitor.engine.settings import ModelSettings

log = logging.getLogger(__name__)

CONNECT_TIMEOUT = 3.0  # seconds: a host that is down should not hold a window for the whole timeout
KEEPALIVE_EXPIRY = 4.0  # below uvicorn's 5 s keep-alive: never reuse a connection the server is closing
BACKOFF_FIRST = 0.5  # seconds of failing fast after the first server-side failure ...
BACKOFF_MOST = 8.0  # ... doubled after each further one, up to this


class ServerError(Exception):
    """One request failed; str() is one line. `server` is true when the server, not the request, is at fault."""

    def __init__(self, message: str, *, server: bool, status: int | None = None):
        super().__init__(message)
        self.server = server
        self.status = status


class Unavailable(ServerError):
    """Not sent: the server failed recently and the backoff pause is not over."""


def read_api_key(settings: ModelSettings) -> str | None:
    """The API key from `api_key_file` or `api_key_env`, or None when none is configured."""
    if settings.api_key_file is not None:
        path = Path(settings.api_key_file)
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            raise ModelLoadError(f"model.api_key_file {path}: cannot read it ({exc.strerror or exc}); "
                                 "create it holding the server's API key") from None
        return lines[0].strip() if lines else ""
    if settings.api_key_env is not None:
        value = os.environ.get(settings.api_key_env)
        if value is None:
            raise ModelLoadError(f"model.api_key_env: the environment variable {settings.api_key_env} is not set; "
                                 "export it (or use EnvironmentFile= in the systemd unit)")
        return value.strip()
    return None


def _verify(settings: ModelSettings) -> ssl.SSLContext | bool:
    if settings.ca_file is None:
        return True
    try:
        return ssl.create_default_context(cafile=str(settings.ca_file))
    except (OSError, ssl.SSLError) as exc:
        raise ModelLoadError(f"model.ca_file {settings.ca_file}: cannot load it ({first_line(exc)}); "
                             "give the PEM certificate of the CA that signed the server's certificate") from None


class Backoff:
    """Fail fast while the server is known to be away; try again after a pause that grows while it stays away."""

    def __init__(self, where: str, first: float = BACKOFF_FIRST, most: float = BACKOFF_MOST):
        self.where = where
        self.first = first
        self.most = most
        self._lock = threading.Lock()
        self._pause = 0.0  # 0: closed (the server answers)
        self._until = 0.0
        self._reason = ""
        self._down_since: float | None = None
        self.trips = 0  # pauses begun since start
        self.refused = 0  # requests failed at once during a pause

    @property
    def open(self) -> bool:
        return time.monotonic() < self._until

    def check(self) -> None:
        """Raise `Unavailable` during a pause."""
        with self._lock:
            left = self._until - time.monotonic()
            if left > 0:
                self.refused += 1
                raise Unavailable(f"model server unavailable ({self._reason}); next try in {left:.1f}s", server=True)

    def failed(self, error: ServerError) -> None:
        """A server-side failure: begin a pause, unless one began while this request was in flight."""
        with self._lock:
            now = time.monotonic()
            if now < self._until:
                return
            self._pause = self.first if self._pause == 0 else min(self.most, self._pause * 2)
            self._until = now + self._pause
            self._reason = str(error)
            self.trips += 1
            if self._down_since is None:
                self._down_since = now
            trips, pause = self.trips, self._pause
        if trips <= 3 or trips % 30 == 0:  # a long outage must not flood the journal
            log.warning("model server: %s; failing requests at once for %.1fs, then trying again [pause %d]",
                        error, pause, trips)

    def succeeded(self) -> None:
        if self._pause == 0:
            return
        with self._lock:
            down = time.monotonic() - self._down_since if self._down_since is not None else 0.0
            self._pause, self._until, self._down_since = 0.0, 0.0, None
        log.info("model server %s answers again (after %.1fs of failures)", self.where, down)


class ServedClient:
    """A thread-safe JSON client of one OpenAI-compatible server (`model.url`)."""

    def __init__(self, settings: ModelSettings):
        assert settings.url is not None
        self.base = settings.url.rstrip("/")
        # vLLM serves /tokenize and /metrics beside /v1, not under it
        self.root = self.base[: -len("/v1")] if self.base.endswith("/v1") else self.base
        self.where = redact_url(self.base)
        self.timeout = float(settings.timeout)
        key = read_api_key(settings)
        self._key = key or ""
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        for name in ("httpx", "httpcore"):  # per-request INFO/DEBUG lines would flood a debug log
            logging.getLogger(name).setLevel(max(logging.getLogger(name).level, logging.WARNING))
        self.http = httpx.Client(
            headers=headers, verify=_verify(settings), follow_redirects=False,
            timeout=httpx.Timeout(self.timeout, connect=min(self.timeout, CONNECT_TIMEOUT)),
            limits=httpx.Limits(max_connections=settings.concurrency, max_keepalive_connections=settings.concurrency,
                                keepalive_expiry=KEEPALIVE_EXPIRY),
        )
        self.backoff = Backoff(self.where)

    def close(self) -> None:
        self.http.close()

    def url(self, path: str) -> str:
        """`/v1/...` paths against the base URL, other absolute paths (/tokenize, /metrics) against its root."""
        if path.startswith("/v1/"):
            return self.base + path[len("/v1"):]
        return self.root + path

    def get(self, path: str, timeout: float | None = None, guard: bool = True) -> Any:
        return self._send("GET", path, None, timeout, guard)

    def post(self, path: str, body: dict[str, Any], timeout: float | None = None, guard: bool = True) -> Any:
        """The JSON answer of a POST; raises ServerError. `guard` = obey and feed the backoff."""
        return self._send("POST", path, body, timeout, guard)

    def _send(self, method: str, path: str, body: dict[str, Any] | None, timeout: float | None, guard: bool) -> Any:
        if guard:
            self.backoff.check()
        wait = self.timeout if timeout is None else max(0.05, timeout)
        try:
            response = self.http.request(method, self.url(path), json=body,
                                         timeout=httpx.Timeout(wait, connect=min(wait, CONNECT_TIMEOUT)))
        except httpx.TimeoutException:
            error = ServerError(f"no answer from {self.where} within {wait:g}s", server=True)
        except httpx.TransportError as exc:
            error = ServerError(f"cannot reach {self.where} ({first_line(exc)})", server=True)
        else:
            if response.status_code < 400:
                try:
                    answer = response.json()
                except ValueError:
                    error = ServerError(f"{redact_url(self.url(path))} answered {response.status_code} without JSON",
                                        server=True)
                else:
                    if guard:
                        self.backoff.succeeded()
                    return answer
            else:
                error = ServerError(self._describe(response, path), server=self._server_side(response.status_code),
                                    status=response.status_code)
        error = type(error)(self._clean(str(error)), server=error.server, status=error.status)
        if guard and error.server:
            self.backoff.failed(error)
        raise error

    def _clean(self, text: str) -> str:
        """A message with the URL's credentials, and the API key should a server echo it, masked."""
        text = scrub(text, self.base)
        return text.replace(self._key, "***") if len(self._key) >= 3 else text

    @staticmethod
    def _server_side(status: int) -> bool:
        """Whether every request would fail the same way (overloaded, down, refusing the key), not just this one."""
        return status in (401, 403, 408, 429) or status >= 500

    def _describe(self, response: httpx.Response, path: str) -> str:
        detail = ""
        try:
            body = response.json()
            if isinstance(body, dict):
                error = body.get("error", body.get("detail", body.get("message", "")))
                detail = error.get("message", "") if isinstance(error, dict) else str(error)
        except ValueError:
            detail = response.text[:200]
        lines = str(detail).strip().splitlines()
        detail = lines[0][:300] if lines else response.reason_phrase
        return f"{redact_url(self.url(path))} answered {response.status_code}: {detail}"
