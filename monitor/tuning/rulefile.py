"""Writing a better phrasing and its threshold into a rule file, keeping everything else as the person wrote it.

The file is read with a round-trip YAML library (ruamel.yaml), which keeps comments, key order,
quoting and block styles, and the rule is changed in that tree. The lines the change touches in
the library's own dump are then carried over to the file as it is (`_splice`), so that what a
round trip would respell elsewhere (values aligned by hand) stays as written. A line diff must show
only the rule's `ask` and `threshold` lines changed (and `release`, where the file sets it: it
moves with the threshold, keeping the rule's hysteresis gap, as `eval`'s sweep does); the new
file must validate as rules; then it replaces the old one atomically, and a running daemon
reloads it as after any edit (`monitor.rules.reload`).
"""

from __future__ import annotations

import difflib
import io
import os
from pathlib import Path
from typing import Any

from monitor.yamlsource import ValidationFailed

FOLD_WIDTH = 88  # where a folded (`>-`) question is wrapped


class ApplyError(Exception):
    """Why the rule file was left as it was; str() is the one line the user sees."""


def _yaml(mapping: int, sequence: int, offset: int) -> Any:
    from ruamel.yaml import YAML

    yaml = YAML(typ="rt")
    yaml.preserve_quotes = True
    yaml.width = 4096  # never re-wrap a long line
    yaml.indent(mapping=mapping, sequence=sequence, offset=offset)
    return yaml


def _round_trip(text: str) -> tuple[Any, Any, str]:
    """(yaml, data, its dump) with the indentation under which `text` dumps back most nearly as it is."""
    from ruamel.yaml.util import load_yaml_guess_indent

    try:
        _, indent, offset = load_yaml_guess_indent(text)
    except Exception as exc:  # noqa: BLE001 - any parse error: the rule loader says it better
        raise ApplyError(f"cannot read it as YAML ({str(exc).splitlines()[0]})") from None
    offset = offset or 0
    best: tuple[int, Any, Any, str] | None = None
    for mapping in dict.fromkeys((2, indent or 2, 4)):
        for sequence in dict.fromkeys((indent or 2, mapping + offset, 2, 4)):
            yaml = _yaml(mapping, max(sequence, offset + 1), offset)
            data = yaml.load(text)
            dumped = _dump(yaml, data)
            if dumped == text:
                return yaml, data, dumped
            differ = sum(max(i2 - i1, j2 - j1) for tag, i1, i2, j1, j2 in _opcodes(text.splitlines(), dumped.splitlines())
                         if tag != "equal")
            if best is None or differ < best[0]:
                best = (differ, yaml, data, dumped)
    assert best is not None
    return best[1], best[2], best[3]


def _opcodes(a: list[str], b: list[str]) -> list[tuple[str, int, int, int, int]]:
    return difflib.SequenceMatcher(None, a, b, autojunk=False).get_opcodes()


def _splice(original: list[str], before: list[str], after: list[str]) -> list[str]:
    """`original` with the change from `before` to `after` (two dumps by one dumper) carried over to it.

    A round trip may respell lines the change does not touch (values aligned by hand, unusual
    spacing): those stay as the person wrote them; only the lines the change touches are taken
    from the dump, where they map one to one onto the original's.
    """
    where: dict[int, int] = {}  # line of `before` -> line of `original`
    for tag, i1, i2, j1, j2 in _opcodes(original, before):
        if tag == "equal" or (tag == "replace" and i2 - i1 == j2 - j1):
            where.update({j1 + k: i1 + k for k in range(j2 - j1)})
    out = list(original)
    shift = 0
    for tag, i1, i2, j1, j2 in _opcodes(before, after):
        if tag == "equal":
            continue
        if i2 > i1:
            lines = [where.get(i) for i in range(i1, i2)]
            if None in lines or lines != list(range(lines[0], lines[0] + len(lines))):  # type: ignore[operator]
                raise ApplyError("a YAML round trip does not give its lines back (unusual layout), so it is not rewritten")
            at, gone = lines[0], len(lines)  # type: ignore[assignment]
            ref = i1
        else:  # an insertion, after the line before it
            prev = where.get(i1 - 1)
            if prev is None:
                raise ApplyError("a YAML round trip does not give its lines back (unusual layout), so it is not rewritten")
            at, gone, ref = prev + 1, 0, i1 - 1
        # the dump may indent this rule otherwise than the file: the new lines take the file's indentation
        delta = _indent(original[where[ref]]) - _indent(before[ref])
        out[at + shift:at + shift + gone] = [" " * max(0, _indent(line) + delta) + line.lstrip(" ") for line in after[j1:j2]]
        shift += (j2 - j1) - gone
    return out


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def _same_but_the_rule(old: str, new: str, rule_id: str, values: dict[str, Any]) -> None:
    """The new text means the old one with the rule's `values` set, and nothing else changed (read with PyYAML)."""
    import yaml

    try:
        expected, got = yaml.safe_load(old), yaml.safe_load(new)
    except yaml.YAMLError:
        got = expected = None
    if expected is not None:
        for rule in expected.get("rules") or ():
            if isinstance(rule, dict) and rule.get("id") == rule_id:
                rule.update(values)
    if got is None or got != expected:
        raise ApplyError("the edit would not read back as intended (an unusual layout), so it is not written")


def _dump(yaml: Any, data: Any) -> str:
    out = io.StringIO()
    yaml.dump(data, out)
    return out.getvalue()


def _styled(old: Any, text: str) -> Any:
    """`text` in the scalar style `old` had (folded, literal, quoted or plain)."""
    from ruamel.yaml.scalarstring import (
        DoubleQuotedScalarString,
        FoldedScalarString,
        LiteralScalarString,
        SingleQuotedScalarString,
    )

    if isinstance(old, FoldedScalarString):
        new = FoldedScalarString(text)
        new.fold_pos = _folds(text, FOLD_WIDTH)  # type: ignore[attr-defined]
        return new
    for kind in (LiteralScalarString, SingleQuotedScalarString, DoubleQuotedScalarString):
        if isinstance(old, kind):
            return kind(text)
    return text


def _folds(text: str, width: int) -> list[int]:
    """Positions of the spaces where a folded scalar breaks its lines, each line at most `width` long."""
    folds, start, last_space = [], 0, None
    for i, ch in enumerate(text):
        if ch == " " and (i + 1 < len(text) and text[i + 1] != " ") and (i == 0 or text[i - 1] != " "):
            if i - start > width and last_space is not None:
                folds.append(last_space)
                start = last_space + 1
            last_space = i
    if len(text) - start > width and last_space is not None and last_space > start:
        folds.append(last_space)
    return folds


def _rule_map(data: Any, rule_id: str) -> tuple[Any, int]:
    """The rule's mapping and the 0-based line after it (the next rule's, or the end of the file)."""
    rules = data.get("rules") if hasattr(data, "get") else None
    for i, item in enumerate(rules or ()):
        if hasattr(item, "get") and item.get("id") == rule_id:
            end = rules.lc.item(i + 1)[0] if i + 1 < len(rules) else None
            return item, end
    raise ApplyError(f"no rule {rule_id!r} in it")


def _key_lines(item: Any, keys: tuple[str, ...], end: int) -> set[int]:
    """0-based lines where the values of `keys` of a rule's mapping are: from the key to the next key (or `end`)."""
    order = list(item.keys())
    lines: set[int] = set()
    for key in keys:
        if key not in order:
            continue
        i = order.index(key)
        first = item.lc.key(key)[0]
        last = item.lc.key(order[i + 1])[0] if i + 1 < len(order) else end
        lines.update(range(first, max(first + 1, last)))
    return lines


def _check_rule(item: Any) -> None:
    """The changed rule validates (the rest of the file is unchanged)."""
    import json

    from monitor.rules import parse_rules

    plain = json.loads(json.dumps({"rules": [item]}, default=str))
    try:
        parse_rules(json.dumps(plain), "<changed rule>")
    except ValidationFailed as exc:
        raise ApplyError(f"the changed rule would not validate: {exc.problems[0].message}") from None


def apply_phrasing(path: Path, rule_id: str, ask: str, threshold: float) -> list[str]:
    """Write `ask` and `threshold` into rule `rule_id` of the rule file `path`; the changed lines as a diff.

    Raises ApplyError (one line) and leaves the file untouched when the change cannot be made
    exactly so.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ApplyError(f"cannot read it ({exc.strerror or exc})") from None
    yaml, data, before = _round_trip(text)
    item, end = _rule_map(data, rule_id)
    if item.get("answer", "yes_no") != "yes_no" or "from" in item:
        raise ApplyError(f"{rule_id!r} is not a yes/no rule: it has no threshold to set")
    allowed = _key_lines(item, ("ask", "threshold", "release"), len(text.splitlines()) if end is None else end)
    item["ask"] = _styled(item.get("ask"), ask)
    if "release" in item:  # keep the file's hysteresis gap
        gap = float(item.get("threshold", 0.7)) - float(item["release"])
        item["release"] = round(max(0.0, threshold - gap), 6)
    if "threshold" in item:
        item["threshold"] = threshold
    else:  # the default (0.7) was in force: the threshold goes right after the question
        item.insert(list(item.keys()).index("ask") + 1, "threshold", threshold)
    _check_rule(item)
    old_lines = text.splitlines()
    new_lines = _splice(old_lines, before.splitlines(), _dump(yaml, data).splitlines())
    new = "\n".join(new_lines) + ("\n" if text.endswith("\n") else "")
    values = {"ask": ask, "threshold": threshold, **({"release": float(item["release"])} if "release" in item else {})}
    _same_but_the_rule(text, new, rule_id, values)
    for tag, a, b, _c, _d in _opcodes(old_lines, new_lines):
        touched = set(range(a, b)) if b > a else {a - 1}  # an insertion: right after an allowed line
        if tag != "equal" and not touched <= allowed:
            raise ApplyError(f"writing it would change line {a + 1} as well, beyond {rule_id}'s ask and threshold, "
                             "so it is not rewritten")
    tmp = path.with_name(f".{path.name}.compare")  # hidden: a daemon reading the folder never loads it
    try:
        tmp.write_text(new, encoding="utf-8")
        os.replace(tmp, path)
    except OSError as exc:
        raise ApplyError(f"cannot write it ({exc.strerror or exc})") from None
    finally:
        tmp.unlink(missing_ok=True)
    return [line for line in difflib.unified_diff(old_lines, new_lines, str(path), str(path), n=0, lineterm="")]
