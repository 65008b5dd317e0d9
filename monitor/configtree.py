"""The config tree before validation: the YAML file read, ${ENV} expanded, `--set` overrides applied.

`monitor.config.load_config` validates the result; every problem found here (a bad `${VAR}`, a
malformed `--set`) is collected with its place so that all of them are reported in one go.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from monitor.configtypes import CliText, expand_env
from monitor.yamlsource import Located, Problem, ValidationFailed, format_loc, load_yaml, parse_yaml


@dataclass
class Tree:
    """What validation starts from."""

    located: Located  # the file, for the line of each key
    data: dict[str, Any]  # expanded and overridden
    base_dir: Path  # relative paths in the config are relative to its file
    problems: list[Problem] = field(default_factory=list)
    override_locs: dict[tuple[Any, ...], str] = field(default_factory=dict)  # key path -> the --set that set it


def read_tree(path: str | Path | None, overrides: Sequence[str] = ()) -> Tree:
    """The file at `path` (None: all defaults) with ${ENV} expanded and `overrides` applied."""
    if path is None:
        located = Located({}, "<defaults>")
        base_dir = Path.cwd()
    else:
        located = load_yaml(path)
        base_dir = Path(path).resolve().parent
    data = located.data
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ValidationFailed([Problem(located.source, 1, "", "the config must be a mapping of keys (node_id:, audio:, ...)")])
    tree = Tree(located, {}, base_dir)
    tree.data = _expand(data, (), located, tree.problems)
    for text in overrides:
        try:
            key, value = parse_override(text)
        except ValueError as exc:
            tree.problems.append(Problem("--set", None, "", str(exc)))
            continue
        for made in _apply_override(tree.data, key, value):
            tree.override_locs.setdefault(made, text)
        tree.override_locs[key] = text
    return tree


def _expand(data: Any, loc: tuple[Any, ...], located: Located, problems: list[Problem]) -> Any:
    if isinstance(data, dict):
        return {k: _expand(v, (*loc, k), located, problems) for k, v in data.items()}
    if isinstance(data, list):
        return [_expand(v, (*loc, i), located, problems) for i, v in enumerate(data)]
    if isinstance(data, str) and "${" in data:
        try:
            return type(data)(expand_env(data))
        except ValueError as exc:
            problems.append(Problem(located.source, located.line_of(loc), format_loc(loc), str(exc)))
    return data


def parse_override(text: str) -> tuple[tuple[str, ...], Any]:
    """'windows.hop=2s' -> (('windows', 'hop'), '2s'); values are YAML.

    A value that is not valid YAML (or that YAML would refuse: `[*a`, an alias bomb, a control
    character) is taken as the plain string the user typed, which the config then accepts or
    rejects like any other string; it is read with the same bounded loader as the files.
    """
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise ValueError(f"--set {text!r}: expected key.path=value, e.g. --set windows.hop=2s")
    try:
        value = parse_yaml(raw, "--set").data if raw.strip() else None
    except ValidationFailed:
        value = raw
    if isinstance(value, str):
        value = CliText(value)
    return tuple(key.split(".")), value


def _apply_override(data: dict[str, Any], path: tuple[str, ...], value: Any) -> list[tuple[str, ...]]:
    """Set `path` to `value`; the paths of the sections it had to create or replace (a
    `--set audio.source.x=1` turns the file's `source: mic` into a mapping), whose problems
    are then the `--set`'s, not the file's."""
    node = data
    made = []
    for depth, part in enumerate(path[:-1], 1):
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
            made.append(path[:depth])
        node = child
    node[path[-1]] = value
    return made
