"""The `web:` config section: the live page the daemon serves.

Kept apart from the server so that `audio-monitor check` validates it without importing the
web stack.
"""

from __future__ import annotations

import ipaddress
import re

from pydantic import Field, field_validator, model_validator

from monitor.configtypes import ConfigPath, Section


_LABEL = r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?"
HOST_NAME = re.compile(rf"{_LABEL}(?:\.{_LABEL})*")


def normalise(name: str) -> str | None:
    """A host name or address in one spelling (lower case, no brackets, no final dot); None if it is neither."""
    text = name.strip().lower()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    if text.endswith(".") and ":" not in text:
        text = text[:-1]
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        pass
    return text if HOST_NAME.fullmatch(text) and len(text) <= 253 else None


def is_loopback(host: str) -> bool:
    """Whether `host` only reaches this machine: `localhost` or a loopback address."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name may resolve anywhere


class WebSettings(Section):
    """A live page per room: levels, scores against thresholds, events with clips, mute, reload."""

    enabled: bool = True
    """Serve the page (http://host:port/)."""
    host: str = Field("127.0.0.1", min_length=1)
    """Address to listen on. Anything but loopback needs `password_file` or `password_env`."""
    port: int = Field(8765, ge=0, le=65535)
    """TCP port (0 picks a free one; the daemon logs the URL)."""
    username: str = Field("admin", min_length=1, pattern=r"^[^:]+$")
    """User name of the HTTP basic login (when a password is set)."""
    password_file: ConfigPath | None = None
    """File holding the page's password (first line). Keep it mode 0640 with group audio-monitor (or 0600)."""
    password_env: str | None = Field(None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    """Name of an environment variable holding the page's password."""
    allowed_hosts: tuple[str, ...] = ()
    """More names the page answers to (a LAN name, a reverse proxy's name): host names or addresses,
    without scheme or port. Loopback, `localhost` and `host` are always accepted; other names get 421."""
    public_url: str | None = Field(None, pattern=r"^https?://[^\s/?#]+(/[^\s?#]*)?$")
    """The base URL under which a phone reaches the page (e.g. https://home.example.net/audio); incidents
    then carry a link to their clip (`clip_url`). Without it no link. Put its host in `allowed_hosts`."""

    @field_validator("allowed_hosts", mode="before")
    @classmethod
    def _one_name(cls, value: object) -> object:
        return (value,) if isinstance(value, str) else value  # `allowed_hosts: nas.lan` is a list of one

    @field_validator("allowed_hosts")
    @classmethod
    def _host_names(cls, names: tuple[str, ...]) -> tuple[str, ...]:
        out = []
        for name in names:
            plain = normalise(name)
            if plain is None:
                raise ValueError(f"{name!r} is not a host name or address; give names such as nas.lan or "
                                 "192.168.1.5, without scheme or port")
            out.append(plain)
        return tuple(out)

    @model_validator(mode="after")
    def _password_beyond_loopback(self) -> WebSettings:
        if self.password_file is not None and self.password_env is not None:
            raise ValueError("give either password_file or password_env, not both")
        if self.enabled and not is_loopback(self.host) and self.password_file is None and self.password_env is None:
            raise ValueError(f"host {self.host} is reachable from other machines: set web.password_file or "
                             "web.password_env (or web.host: 127.0.0.1, or web.enabled: false)")
        return self
