"""Naming a sound source without giving away its credentials.

Camera URLs carry passwords (`rtsp://admin:secret@192.168.1.20/stream1`). Everything a person or
another machine can read — log lines, the status, MQTT, metrics — names a source through
`describe_source`, and FFmpeg's messages pass through `scrub`, never the raw setting. The
masking errs on the side of hiding too much: a password with an unencoded `@`, `/`, `?` or `#`
is still masked whole.
"""

from __future__ import annotations

import re
from urllib.parse import unquote

_MASK = "***"
# host (a name, IPv4, or [IPv6]) and optional port, then the end of the authority
_AUTHORITY = re.compile(r"(?:\[[0-9A-Za-z:.%]*\]|[^\s/?#@\[\]:]*)(?::\d*)?(?=[/?#]|$)")
# key=value pairs whose value is a secret (query strings, and paths like /user=admin&password=x)
_SECRET_PARAM = re.compile(
    r"(?i)((?:^|[?&;/_])[\w.-]*(?:pass|pwd|token|secret|key|auth|sig|cred|user|login)[\w.-]*=)([^&;#/]*)")
# userinfo in any URL inside free text (an FFmpeg message quoting a redirect, ...)
_URL_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^\s/?#]*@")


def _split_userinfo(rest: str) -> tuple[str | None, str]:
    """(userinfo, the rest) of what follows `scheme://`.

    The userinfo ends at the last `@` that is followed by a host[:port] and the end of the
    authority, so an unencoded `@`, `/` or `?` inside a password still ends up masked (at worst
    more than the userinfo is masked, never less).
    """
    for i in reversed([m.start() for m in re.finditer("@", rest)]):
        if _AUTHORITY.match(rest, i + 1):
            return rest[:i], rest[i + 1 :]
    return None, rest


def redact_url(url: str) -> str:
    """The URL with user name, password and secret query values replaced by `***`.

    Scheme, host, port and path stay, so that a log line still says which camera is meant:
    `rtsp://admin:pw@cam.lan:554/stream1?token=x` -> `rtsp://***@cam.lan:554/stream1?token=***`.
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        return _SECRET_PARAM.sub(lambda m: m.group(1) + _MASK, url)
    userinfo, rest = _split_userinfo(rest)
    rest = _SECRET_PARAM.sub(lambda m: m.group(1) + _MASK, rest)
    return f"{scheme}://{_MASK + '@' if userinfo is not None else ''}{rest}"


def _secrets(url: str) -> list[str]:
    """Every form in which the URL's secrets could be echoed back (raw and percent-decoded)."""
    _, sep, rest = url.partition("://")
    userinfo, rest = _split_userinfo(rest) if sep else (None, url)
    found: list[str] = []
    if userinfo is not None:
        found += [userinfo, unquote(userinfo)]
        if ":" in userinfo:
            password = userinfo.split(":", 1)[1]
            found += [password, unquote(password)]
    for m in _SECRET_PARAM.finditer(rest):
        found += [m.group(2), unquote(m.group(2))]
    # longest first, so that a password inside the userinfo does not break up the userinfo
    return sorted({s for s in found if len(s) >= 3}, key=len, reverse=True)


def scrub(text: str, url: str) -> str:
    """`text` (an FFmpeg/PyAV message) with the URL and anything secret in it masked.

    Secrets shorter than 3 characters are not searched for as bare strings (that would mask
    every digit); the URL and any `user:pass@` in the text are masked whatever their length.
    """
    out = text.replace(url, redact_url(url)) if url else text
    out = _URL_USERINFO.sub(lambda m: m.group(1) + _MASK + "@", out)
    for secret in _secrets(url):
        out = out.replace(secret, _MASK)
    return out


def describe_source(source: str) -> str:
    """A name for an `audio.source` that is safe to log, show or publish ("mic", "file:…", a redacted URL)."""
    text = str(source)
    return redact_url(text) if "://" in text else text
