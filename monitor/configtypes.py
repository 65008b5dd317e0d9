"""Value types shared by the config and the rule files: durations and config-relative paths.

Kept free of heavy imports: `audio-monitor check` loads this and nothing of torch.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, ValidationInfo, WrapSerializer

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0, "d": 86400.0}
_PART = re.compile(r"(\d+(?:\.\d+)?|\.\d+)\s*(ms|min|s|m|h|d)")


def parse_duration(value: Any) -> float:
    """'8s', '2m', '500ms', '1h30m' or a plain number of seconds -> seconds."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 8s, 2m or 500ms")
    if isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip().lower()
        sign = 1.0
        if text.startswith("-"):
            sign, text = -1.0, text[1:].strip()
        try:
            seconds = sign * float(text)
        except ValueError:
            parts = _PART.findall(text)
            if not parts or _PART.sub("", text).strip():
                raise ValueError(f"{value!r} is not a duration; write it like 8s, 2m, 500ms or 1h30m") from None
            seconds = sign * sum(float(n) * _UNITS[u] for n, u in parts)
    else:
        raise ValueError("expected a duration such as 8s, 2m or 500ms")
    if seconds < 0:
        raise ValueError(f"duration must not be negative (got {value!r})")
    return seconds


def format_duration(seconds: float) -> str:
    """Seconds -> the shortest readable form ('500ms', '8s', '2m', '1h')."""
    if seconds and seconds < 1:
        return f"{seconds * 1000:g}ms"
    for unit, size in (("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:g}{unit}"
    return f"{seconds:g}s"


Duration = Annotated[
    float,
    BeforeValidator(parse_duration),
    WrapSerializer(lambda v, _h: format_duration(v), when_used="json"),
]
"""Seconds as a float; written in YAML as 8s, 2m, 500ms, 1h30m or a bare number of seconds."""


class CliText(str):
    """A string that came from `--set` on the command line (paths resolve against the cwd)."""


def resolve_path(value: Any, info: ValidationInfo) -> Any:
    """Relative paths in a file resolve against that file's folder; from `--set`, the cwd."""
    if value is None or not isinstance(value, (str, Path)):
        return value
    text = os.path.expanduser(str(value))
    path = Path(text)
    if path.is_absolute():
        return path
    if isinstance(value, CliText):
        return Path(os.path.normpath(Path.cwd() / path))
    base = (info.context or {}).get("base_dir")
    return Path(os.path.normpath(Path(base) / path)) if base else path


ConfigPath = Annotated[Path, BeforeValidator(resolve_path)]
"""A filesystem path; relative ones resolve against the folder of the file that holds them."""


class Section(BaseModel):
    """Base of every config section: unknown keys are errors, values are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def expand_env(text: str) -> str:
    """Expand ${VAR} and ${VAR:-default}; raise ValueError naming an unset variable."""

    def sub(m: re.Match[str]) -> str:
        name, default = m.group(1), m.group(2)
        value = os.environ.get(name)
        if value is None or (value == "" and default is not None):
            if default is None:
                raise ValueError(f"environment variable {name} is not set (use ${{{name}:-default}} for a fallback)")
            return default
        return value

    return _ENV.sub(sub, text)


def read_secret(file: Path | None, env: str | None, section: str, what: str) -> str | None:
    """A password from `{section}.password_file` (its first line) or the variable named by
    `{section}.password_env`; None when neither is set. ValueError: one line naming the key to fix."""
    if file is not None:
        try:
            text = Path(file).read_text(encoding="utf-8")
        except OSError as exc:
            raise ValueError(f"{section}.password_file {file}: cannot read it ({exc.strerror or exc}); "
                             f"create it holding {what}") from None
        lines = text.splitlines()
        return lines[0] if lines else ""
    if env is not None:
        value = os.environ.get(env)
        if value is None:
            raise ValueError(f"{section}.password_env: the environment variable {env} is not set; "
                             "export it (or use EnvironmentFile= in the systemd unit)")
        return value
    return None
