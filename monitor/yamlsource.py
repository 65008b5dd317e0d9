"""YAML loading that remembers where every value came from.

Config and rule files are edited by people; an error has to point at the line they wrote.
`load_yaml` returns the plain data together with a map from key path to line number, and
`Problem` / `ValidationFailed` carry the `FILE:LINE: key.path: message` form used everywhere.

Whatever the file holds — control characters, an alias inside its own anchor, a few lines of
aliases that stand for billions of values, nesting thousands deep, a file of gigabytes — the
answer is one such problem, at a bounded cost: never a traceback, never a hang.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

log = logging.getLogger(__name__)

MAX_BYTES = 1 << 20
"""Config, rule and labels files are a few KiB; a bigger one is the wrong file (or a hostile one)."""
MAX_VALUES = 100_000
"""Values constructed per document, counting every expansion of an alias (see `_Builder`)."""
MAX_DEPTH = 100
"""Nesting levels a document may have; the deepest real config has five."""

_TOO_LARGE = f"file too large for a config, rule or labels file (over {MAX_BYTES / 2**20:g} MiB)"
_MERGE = "tag:yaml.org,2002:merge"
_VALUE = "tag:yaml.org,2002:value"

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
        text = f"{where}: {self.path}: {self.message}" if self.path else f"{where}: {self.message}"
        return one_line(text)


def one_line(text: str) -> str:
    """Escape line breaks and other control characters: one problem is one line of output."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


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


class _Refused(Exception):
    """A document that parses but cannot be turned into data at a sane cost (or at all)."""

    def __init__(self, line: int | None, message: str):
        super().__init__(message)
        self.line = line
        self.message = message


def _line(node: yaml.Node) -> int:
    return int(node.start_mark.line) + 1


class _Loader(yaml.SafeLoader):
    """SafeLoader that gives up early on documents no person wrote.

    PyYAML's scanner pays for every open `[` on every later token (10 000 of them take
    seconds, a megabyte of them hours) and its composer recurses once per level, so nesting is
    refused beyond `MAX_DEPTH`; and a megabyte of `1,` is half a million nodes, so composing
    stops after `MAX_VALUES`. (fetch_flow_collection_start, add_indent and compose_node are
    PyYAML internals; `parse_yaml` still catches RecursionError should they change.)
    """

    def __init__(self, text: str):
        super().__init__(text)
        self.composed = 0

    def fetch_flow_collection_start(self, TokenClass: Any) -> None:  # noqa: N803 (PyYAML's name)
        if self.flow_level >= MAX_DEPTH:
            raise _Refused(self.line + 1, f"nested too deeply (more than {MAX_DEPTH} levels)")
        super().fetch_flow_collection_start(TokenClass)  # type: ignore[misc]

    def add_indent(self, column: int) -> bool:
        if len(self.indents) >= MAX_DEPTH:
            raise _Refused(self.line + 1, f"nested too deeply (more than {MAX_DEPTH} levels)")
        return bool(super().add_indent(column))  # type: ignore[misc]

    def compose_node(self, parent: Any, index: Any) -> Any:
        self.composed += 1
        if self.composed > MAX_VALUES:
            raise _Refused(self.peek_event().start_mark.line + 1, f"too many values: more than {MAX_VALUES}")
        return super().compose_node(parent, index)


class _Builder:
    """Turns the composed node graph into plain data and the line of every key path.

    PyYAML's constructor gives all aliases of an anchor one shared object; here every alias is
    expanded into its own copy, because each key path needs its own line. That makes two
    hostile documents expensive: an alias inside its own anchor (`a: &a [*a]`) stands for an
    endless tree, and a few lines of aliases of aliases for billions of values. The first is
    refused as soon as a node turns up inside itself, the second once `MAX_VALUES` values have
    been built.
    """

    def __init__(self, loader: _Loader, lines: dict[Loc, int]):
        self.loader = loader
        self.lines = lines
        self.count = 0
        self.line: int | None = None  # of the node being built, for errors without a mark
        self._open: set[int] = set()  # ids of the nodes on the current path (cycle detection)

    def build(self, node: yaml.Node, loc: Loc) -> Any:
        self._enter(node, loc)
        self.lines.setdefault(loc, _line(node))
        try:
            if isinstance(node, yaml.MappingNode):
                return self._mapping(node, loc)
            if isinstance(node, yaml.SequenceNode):
                return [self.build(item, (*loc, i)) for i, item in enumerate(node.value)]
            return self._scalar(node)
        finally:
            self._open.discard(id(node))

    def _enter(self, node: yaml.Node, loc: Loc) -> None:
        self.line = _line(node)
        self._spend(node, 1)
        if len(loc) > MAX_DEPTH:
            raise _Refused(self.line, f"nested too deeply (more than {MAX_DEPTH} levels)")
        if id(node) in self._open:
            raise _Refused(self.line, "recursive alias: an alias inside its own anchor stands for an endless value")
        self._open.add(id(node))

    def _spend(self, node: yaml.Node, n: int) -> None:
        self.count += n
        if self.count > MAX_VALUES:
            raise _Refused(_line(node), f"too many values (alias expansion?): more than {MAX_VALUES}")

    def _scalar(self, node: yaml.Node) -> Any:
        if node.tag == _VALUE:  # a bare `=`: PyYAML reads it as a string when it is a key
            return self.loader.construct_scalar(node)  # type: ignore[arg-type]
        try:
            return self.loader.construct_object(node, deep=True)
        except (ValueError, TypeError, OverflowError) as exc:  # 2001-13-45, an int of 10 000 digits
            raise _Refused(_line(node), f"cannot read the value {_short(node.value)}: {exc}") from None

    def _key(self, node: yaml.Node) -> Any:
        """A mapping key; a list of plain values becomes a tuple, anything else must be plain."""
        if isinstance(node, yaml.ScalarNode):
            self._spend(node, 1)
            return self._scalar(node)
        if isinstance(node, yaml.SequenceNode) and all(isinstance(n, yaml.ScalarNode) for n in node.value):
            self._spend(node, 1 + len(node.value))
            return tuple(self._scalar(n) for n in node.value)
        raise _Refused(_line(node), "a key must be a plain value (a word or a number), not a mapping or a nested list")

    def _mapping(self, node: yaml.MappingNode, loc: Loc) -> dict[Any, Any]:
        out: dict[Any, Any] = {}
        from_merge: set[Any] = set()  # keys a merge supplied: a later entry may override them
        for key_node, value_node, merged in self._entries(node):
            key = self._key(key_node)
            child = (*loc, key)
            if key in out and key not in from_merge:
                raise _Refused(_line(key_node), f"YAML syntax error: duplicate key {key!r}")
            if merged:
                from_merge.add(key)
            else:
                from_merge.discard(key)
            self.lines[child] = _line(key_node)
            out[key] = self.build(value_node, child)
        return out

    def _entries(self, node: yaml.MappingNode) -> list[tuple[yaml.Node, yaml.Node, bool]]:
        """(key, value, from a merge) in construction order: what `<<:` brings first, then the
        mapping's own entries, as PyYAML's flatten_mapping orders them (without editing the
        shared node, and with every merged entry paid for)."""
        merged: list[tuple[yaml.Node, yaml.Node]] = []
        own: list[tuple[yaml.Node, yaml.Node]] = []
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE:
                merged.extend(self._merge(value_node))
            else:
                own.append((key_node, value_node))
        return [(k, v, True) for k, v in merged] + [(k, v, False) for k, v in own]

    def _merge(self, node: yaml.Node) -> list[tuple[yaml.Node, yaml.Node]]:
        """The entries `<<: *a` or `<<: [*a, *b]` brings; of a list, the first mapping wins."""
        if isinstance(node, yaml.MappingNode):
            sources = [node]
        elif isinstance(node, yaml.SequenceNode) and all(isinstance(n, yaml.MappingNode) for n in node.value):
            sources = list(reversed(node.value))
        else:
            raise _Refused(_line(node), "`<<:` must name a mapping (`<<: *anchor`) or a list of them")
        out: list[tuple[yaml.Node, yaml.Node]] = []
        for source in sources:
            if id(source) in self._open:
                raise _Refused(_line(source), "recursive alias: a mapping merges itself with `<<:`")
            self._open.add(id(source))
            try:
                entries = self._entries(source)
            finally:
                self._open.discard(id(source))
            self._spend(source, len(entries))
            out.extend((k, v) for k, v, _merged in entries)
        return out


def _short(text: Any, limit: int = 40) -> str:
    text = str(text)
    return repr(text if len(text) <= limit else text[:limit] + "...")


def load_yaml(path: str | Path) -> Located:
    """Read a YAML file; raise ValidationFailed (one FILE:LINE problem) if it cannot be parsed."""
    source = str(path)
    return parse_yaml(_read(path, source), source)


def _read(path: str | Path, source: str) -> str:
    """The file's text, read no further than `MAX_BYTES` (a path may name /dev/zero)."""
    def fail(line: int | None, message: str) -> ValidationFailed:
        return ValidationFailed([Problem(source, line, "", message)])

    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_BYTES + 1)
    except FileNotFoundError:
        raise fail(None, "file not found") from None
    except IsADirectoryError:
        raise fail(None, "is a folder, expected a YAML file") from None
    except (OSError, ValueError) as exc:  # ValueError: a path with a NUL byte
        raise fail(None, f"cannot read: {getattr(exc, 'strerror', None) or exc}") from None
    if len(raw) > MAX_BYTES:
        raise fail(None, _TOO_LARGE)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise fail(line, f"not UTF-8 text (byte 0x{raw[exc.start]:02x}); save the file as UTF-8") from None


def parse_yaml(text: str, source: str) -> Located:
    """Parse YAML text; `source` names it in errors."""
    def fail(line: int | None, message: str) -> ValidationFailed:
        return ValidationFailed([Problem(source, line, "", message)])

    if len(text) > MAX_BYTES:
        raise fail(None, _TOO_LARGE)
    lines: dict[Loc, int] = {}
    loader: _Loader | None = None
    builder: _Builder | None = None
    try:
        loader = _Loader(text)  # checks for control characters already
        node = loader.get_single_node()
        if node is None:
            return Located(None, source, lines)
        builder = _Builder(loader, lines)
        data = builder.build(node, ())
    except _Refused as exc:
        raise fail(exc.line, exc.message) from None
    except yaml.reader.ReaderError as exc:
        raise fail(text.count("\n", 0, exc.position) + 1, _reader_message(exc)) from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        msg = " ".join(str(x) for x in (exc.context, exc.problem) if x)
        raise fail(line, f"YAML syntax error: {msg}") from None
    except yaml.YAMLError as exc:
        raise fail(None, f"YAML syntax error: {' '.join(str(exc).split())}") from None
    except RecursionError:  # PyYAML's composer recurses once per level (see _Loader)
        line = builder.line if builder is not None else (loader.line + 1 if loader is not None else None)
        raise fail(line, "nested too deeply") from None
    finally:
        if loader is not None:
            loader.dispose()
    return Located(data, source, lines)


def _reader_message(exc: yaml.reader.ReaderError) -> str:
    char = exc.character
    name = f"U+{char:04X}" if isinstance(char, int) else repr(char)
    return f"control character {name} is not allowed in YAML (a NUL byte or a binary file?)"


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
