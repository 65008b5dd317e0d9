"""Which `Host:` names the page answers to (a defence against DNS rebinding).

A page on another site can point its own DNS name at 127.0.0.1 and then read this page as if it
were its own: the browser still believes it talks to `evil.example`, and says so in `Host:`.
So every request (the page, its stream, state, clips, commands) must name this server: a
loopback address or `localhost`, the configured `web.host`, a name in `web.allowed_hosts`, and,
when listening on every interface (`0.0.0.0`, `::`), any IP address (a page loaded from an
address, not a name, cannot be rebound) and the machine's own host name (also with `.local`).
Anything else is answered 421 and logged once per name.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
from collections.abc import Iterable

from starlette.responses import PlainTextResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from monitor.web.settings import normalise

log = logging.getLogger(__name__)

WILDCARD = ("0.0.0.0", "::")
LOGGED_MAX = 32  # distinct refused names logged; a flood of names is not a flood of lines


def host_of(header: str) -> str | None:
    """The name in a `Host:` header (`name`, `name:port`, `[v6]:port`), normalised; None when malformed."""
    if header.startswith("["):
        end = header.find("]")
        if end < 0:
            return None
        name, rest = header[: end + 1], header[end + 1:]
        if rest and not (rest.startswith(":") and rest[1:].isdigit()):
            return None
        result = normalise(name)
        return result if result is not None and ":" in result else None  # brackets only around IPv6
    name, colon, port = header.partition(":")
    if colon and not port.isdigit():
        return None
    return normalise(name)


def machine_names() -> set[str]:
    """This machine's host name as `hostname` prints it, its first label, and both with `.local` (mDNS)."""
    names: set[str] = set()
    full = normalise(socket.gethostname())
    if full:
        for name in {full, full.split(".")[0]}:
            names.update({name, f"{name}.local"})
    return names


class HostPolicy:
    """The names one server answers to."""

    def __init__(self, bind: str, allowed: Iterable[str] = ()):
        bound = normalise(bind)
        self.any_interface = bound in WILDCARD
        self.names = {"localhost", *(n for n in (normalise(a) for a in allowed) if n)}
        if bound is not None and not self.any_interface:
            self.names.add(bound)
        if self.any_interface:
            self.names |= machine_names()

    def accepts(self, header: str | None) -> bool:
        name = host_of(header) if header else None
        if name is None:
            return False
        if name in self.names:
            return True
        try:
            address = ipaddress.ip_address(name)
        except ValueError:
            return False
        return address.is_loopback or self.any_interface


class HostCheck:
    """ASGI middleware: 421 for a request whose `Host:` does not name this server, before anything else."""

    def __init__(self, app: ASGIApp, policy: HostPolicy):
        self.app = app
        self.policy = policy
        self._logged: set[str] = set()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            raw = dict(scope["headers"]).get(b"host")
            header = raw.decode("latin-1") if raw is not None else None
            if not self.policy.accepts(header):
                self._log(header)
                response = PlainTextResponse("this page answers only to its own address (see web.allowed_hosts)\n",
                                             status_code=421)
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)

    def _log(self, header: str | None) -> None:
        shown = "(none)" if header is None else header[:80]
        if shown in self._logged or len(self._logged) >= LOGGED_MAX:
            return
        self._logged.add(shown)
        log.warning("web: refused a request for host %r: not an address of this page; if it is your name for this "
                    "machine, add it to web.allowed_hosts", shown)
