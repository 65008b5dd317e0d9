"""Writing a better phrasing and its threshold into a rule file, keeping everything else as the person wrote it.

The file is read and written with a round-trip YAML library (ruamel.yaml), which keeps comments,
key order, quoting and block styles; the indentation it writes is chosen so that the untouched
file comes back byte for byte (else nothing is written). After the change, a line diff must show
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


def _round_trip(text: str) -> tuple[Any, Any]:
    """(yaml, data) with the indentation under which `text` dumps back unchanged; ApplyError if none does."""
    from ruamel.yaml.util import load_yaml_guess_indent

    try:
        _, indent, offset = load_yaml_guess_indent(text)
    except Exception as exc:  # noqa: BLE001 - any parse error: the rule loader says it better
        raise ApplyError(f"cannot read it as YAML ({str(exc).splitlines()[0]})") from None
    offset = offset or 0
    for mapping in dict.fromkeys((2, indent or 2, 4)):
        for sequence in dict.fromkeys((indent or 2, mapping + offset, 2, 4)):
            yaml = _yaml(mapping, max(sequence, offset + 1), offset)
            data = yaml.load(text)
            if _dump(yaml, data) == text:
                return yaml, data
    raise ApplyError("a YAML round trip does not give this file back unchanged (unusual indentation or "
                     "spacing), so it is not rewritten")


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
    yaml, data = _round_trip(text)
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
    new = _dump(yaml, data)
    old_lines, new_lines = text.splitlines(), new.splitlines()
    for tag, a, b, _c, _d in difflib.SequenceMatcher(None, old_lines, new_lines, autojunk=False).get_opcodes():
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
