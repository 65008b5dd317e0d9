"""YAML loading that remembers where every value came from.

Config and rule files are edited by people; an error has to point at the line they wrote.
`load_yaml` returns the plain data together with a map from key path to line number, and
`Problem` / `ValidationFailed` carry the `FILE:LINE: key.path: message` form used everywhere.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

Loc = tuple[Any, ...]  # a key path: str keys and int list indices


@dataclass(frozen=True)
class Problem:
    """One validation error, located in a file (or on the command line)."""

    source: str  # a file path, or "--set" for command-line overrides
    line: int | None
    path: str  # dotted key path, e.g. "windows.hop" or "rules[2].threshold"
    message: str

    def __str__(self) -> str:
        where = f"{self.source}:{self.line}" if self.line is not None else self.source
        return f"{where}: {self.path}: {self.message}" if self.path else f"{where}: {self.message}"


class ValidationFailed(Exception):
    """Raised with every problem found, so the user fixes them all in one go."""

    def __init__(self, problems: Sequence[Problem]):
        self.problems = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


@dataclass
class Located:
    """Plain YAML data plus the line of every key path (1-based)."""

    data: Any
    source: str
    lines: dict[Loc, int] = field(default_factory=dict)

    def line_of(self, loc: Iterable[Any]) -> int | None:
        """The line of `loc`, or of its nearest ancestor that has one."""
        loc = tuple(loc)
        while True:
            if loc in self.lines:
                return self.lines[loc]
            if not loc:
                return None
            loc = loc[:-1]


def format_loc(loc: Iterable[Any]) -> str:
    """('rules', 2, 'threshold') -> 'rules[2].threshold'."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def _construct(node: yaml.Node, loc: Loc, lines: dict[Loc, int], loader: yaml.SafeLoader) -> Any:
    lines.setdefault(loc, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        explicit = sum(1 for key_node, _ in node.value if key_node.tag != "tag:yaml.org,2002:merge")
        loader.flatten_mapping(node)  # puts the entries of `<<: *anchor` first
        merged = len(node.value) - explicit
        out: dict[Any, Any] = {}
        from_merge: set[Any] = set()  # keys a merge supplied: an explicit key may override them
        for index, (key_node, value_node) in enumerate(node.value):
            key = loader.construct_object(key_node, deep=True)
            if isinstance(key, list):
                key = tuple(key)
            child = (*loc, key)
            lines[child] = key_node.start_mark.line + 1
            if key in out and key not in from_merge:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark
                )
            if index < merged:
                from_merge.add(key)
            else:
                from_merge.discard(key)
            out[key] = _construct(value_node, child, lines, loader)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_construct(item, (*loc, i), lines, loader) for i, item in enumerate(node.value)]
    return loader.construct_object(node, deep=True)


def load_yaml(path: str | Path) -> Located:
    """Read a YAML file; raise ValidationFailed (one FILE:LINE problem) if it cannot be parsed."""
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ValidationFailed([Problem(source, None, "", "file not found")]) from None
    except IsADirectoryError:
        raise ValidationFailed([Problem(source, None, "", "is a folder, expected a YAML file")]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ValidationFailed([Problem(source, None, "", f"cannot read: {exc}")]) from None
    return parse_yaml(text, source)


def parse_yaml(text: str, source: str) -> Located:
    """Parse YAML text; `source` names it in errors."""
    loader = yaml.SafeLoader(text)
    lines: dict[Loc, int] = {}
    try:
        node = loader.get_single_node()
        data = None if node is None else _construct(node, (), lines, loader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        msg = " ".join(str(x) for x in (exc.context, exc.problem) if x)
        raise ValidationFailed([Problem(source, line, "", f"YAML syntax error: {msg}")]) from None
    except yaml.YAMLError as exc:
        raise ValidationFailed([Problem(source, None, "", f"YAML syntax error: {exc}")]) from None
    finally:
        loader.dispose()
    return Located(data, source, lines)


def pydantic_problems(exc: Any, located: Located, prefix: Loc = (), overrides: dict[Loc, str] | None = None) -> list[Problem]:
    """Map a pydantic ValidationError onto the YAML lines the values came from.

    `prefix` is prepended to every error location (for models validated from a sub-tree);
    values that came from the command line (`overrides`: path -> original text) are reported
    against "--set" instead of the file.
    """
    problems = []
    for err in exc.errors(include_url=False):
        loc = tuple(
            part for part in (*prefix, *err["loc"])
            # pydantic adds the tag of tagged unions and function-validator names; not user keys
            if not (isinstance(part, str) and (part.startswith("function-") or part.endswith("]")))
        )
        message = _message(err)
        if overrides:
            hit = next((o for o in overrides if loc[: len(o)] == o), None)
            if hit is not None:
                problems.append(Problem("--set", None, format_loc(loc), message))
                continue
        problems.append(Problem(located.source, located.line_of(loc), format_loc(loc), message))
    return problems


def _message(err: dict[str, Any]) -> str:
    kind = err.get("type", "")
    if kind == "extra_forbidden":
        return "unknown key (check the spelling; see the config reference in README.md)"
    if kind == "missing":
        return "required key is missing"
    msg = str(err.get("msg", "invalid value"))
    for lead in ("Value error, ", "Assertion failed, "):
        if msg.startswith(lead):
            msg = msg[len(lead):]
    if kind not in ("value_error", "assertion_error") and "input" in err and not isinstance(err["input"], (dict, list)):
        msg = f"{msg} (got {err['input']!r})"
    return msg
