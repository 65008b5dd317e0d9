"""Reading rule files: one file or a folder of them, validated as a whole.

Every problem in every file is collected before anything is raised, each as
`FILE:LINE: rules[i].key: message`, so one `audio-monitor check` shows the user all of them.
Checks that span files (duplicate ids, `from:` naming a text rule) run after each file has
been read on its own.
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from monitor.rules.schema import MODELS, Gate, Rule, cross_checks, keys_of, kind_of
from monitor.yamlsource import Located, Problem, ValidationFailed, format_loc, load_yaml, parse_yaml, pydantic_problems

log = logging.getLogger(__name__)

SUFFIXES = (".yaml", ".yml")
_OWNERS = {key: [kind for kind in MODELS if key in keys_of(kind)] for kind in MODELS for key in keys_of(kind)}
_KIND_NAMES = {"yes_no": "yes_no rules", "text": "text rules (answer: text)", "match": "match rules (from: + match:)"}


@dataclass(frozen=True)
class RuleSet:
    """The validated rules, in file order, and where they came from (for messages and change watching)."""

    rules: list[Rule]
    files: tuple[Path, ...] = ()
    path: Path | None = None  # what `rules:` in the config named: a file or a folder
    origins: Mapping[str, tuple[str, int | None]] = field(default_factory=dict)  # id -> (file, line)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_by_id", {rule.id: rule for rule in self.rules})

    def get(self, rule_id: str) -> Rule | None:
        return self._by_id.get(rule_id)  # type: ignore[attr-defined,no-any-return]

    def __getitem__(self, rule_id: str) -> Rule:
        rule = self.get(rule_id)
        if rule is None:
            raise KeyError(rule_id)
        return rule

    def __contains__(self, rule_id: object) -> bool:
        return rule_id in self._by_id  # type: ignore[attr-defined]

    def __iter__(self) -> Iterator[Rule]:
        return iter(self.rules)

    def __len__(self) -> int:
        return len(self.rules)

    @property
    def ids(self) -> list[str]:
        return [rule.id for rule in self.rules]

    @property
    def enabled(self) -> list[Rule]:
        return [rule for rule in self.rules if rule.enabled]

    def where(self, rule_id: str) -> str:
        """'rules/home.yaml:12' for messages; '' when unknown."""
        source, line = self.origins.get(rule_id, ("", None))
        return f"{source}:{line}" if line is not None else source


def rule_files(path: Path) -> list[Path]:
    """The files a `rules:` path stands for: the file itself, or a folder's *.yaml / *.yml in name order.

    Hidden files are skipped: editors leave lock and swap files such as `.#home.yaml` next to
    the file being edited.
    """
    if path.is_dir():
        return sorted(p for p in path.iterdir() if p.suffix in SUFFIXES and not p.name.startswith(".") and p.is_file())
    return [path]


def load_rules(path: str | Path) -> RuleSet:
    """Read and validate a rule file or a folder of them; raise ValidationFailed with every problem."""
    path = Path(path)
    if not path.exists():
        message = "not found: `rules:` in the config must name a rule file or a folder of *.yaml files"
        raise ValidationFailed([Problem(str(path), None, "", message)])
    files = rule_files(path)
    if not files:
        raise ValidationFailed([Problem(str(path), None, "", "the folder has no *.yaml rule files")])
    problems: list[Problem] = []
    parsed: list[_Parsed] = []
    for file in files:
        try:
            located = load_yaml(file)
        except ValidationFailed as exc:
            problems.extend(exc.problems)
            continue
        parsed.extend(_parse_file(located, problems))
    return _finish(parsed, problems, files=tuple(files), path=path)


def parse_rules(text: str, source: str = "<rules>") -> RuleSet:
    """Validate rules given as YAML text (tests, tools); same checks and messages as `load_rules`."""
    problems: list[Problem] = []
    located = parse_yaml(text, source)
    parsed = list(_parse_file(located, problems))
    return _finish(parsed, problems, files=(), path=None)


_Parsed = tuple[Located, int, dict[str, Any], "Rule | None"]


def _parse_file(located: Located, problems: list[Problem]) -> Iterator[_Parsed]:
    data = located.data
    src = located.source
    if data is None:
        log.warning("%s: empty rule file", src)
        return
    if not isinstance(data, dict):
        problems.append(Problem(src, located.line_of(()), "", "a rule file is a mapping with one key, `rules:`, holding a list of rules"))
        return
    for key in data:
        if key != "rules" and not (isinstance(key, str) and key.startswith("x-")):  # x-*: room for YAML anchors
            problems.append(Problem(src, located.line_of((key,)), format_loc((key,)),
                                    "unknown key: a rule file has `rules:` at the top level (and x-... keys for YAML anchors)"))
    items = data.get("rules")
    if items is None:
        if "rules" not in data:
            problems.append(Problem(src, located.line_of(()), "", "missing `rules:`, the list of rules"))
        return
    if not isinstance(items, list):
        problems.append(Problem(src, located.line_of(("rules",)), "rules", "expected a list of rules (each item starts with `- id: ...`)"))
        return
    for i, raw in enumerate(items):
        rule = _parse_rule(raw, i, located, problems)
        if isinstance(raw, dict):
            yield located, i, raw, rule


def _parse_rule(raw: Any, i: int, located: Located, problems: list[Problem]) -> Rule | None:
    loc: tuple[Any, ...] = ("rules", i)
    src = located.source
    if not isinstance(raw, dict):
        problems.append(Problem(src, located.line_of(loc), format_loc(loc), "each rule is a mapping of keys (id:, ask:, ...)"))
        return None
    kind = kind_of(raw)
    data = raw
    if kind is None:
        problems.append(Problem(src, located.line_of((*loc, "answer")), format_loc((*loc, "answer")),
                                f"must be yes_no or text (got {raw.get('answer')!r}); a rule on another rule's "
                                "transcript has `from:` and `match:` instead"))
        kind, data = "yes_no", {k: v for k, v in raw.items() if k != "answer"}
    elif kind == "match" and raw.get("answer", "match") != "match":
        problems.append(Problem(src, located.line_of((*loc, "answer")), format_loc((*loc, "answer")),
                                "a rule with `from:` is a match rule: remove `answer` (or remove `from` to ask the model)"))
        data = {k: v for k, v in raw.items() if k != "answer"}
    model = MODELS[kind]
    try:
        rule: Rule = model.model_validate(data)  # type: ignore[assignment]
    except ValidationError as exc:
        problems.extend(_explain(p, kind) for p in pydantic_problems(exc, located, prefix=loc))
        return None
    for key, message in cross_checks(rule, set(raw)):
        problems.append(Problem(src, located.line_of((*loc, key)), format_loc((*loc, key)), message))
    return rule


def _explain(problem: Problem, kind: str) -> Problem:
    """Turn pydantic's bare 'unknown key' into what the user probably meant."""
    if not problem.message.startswith("unknown key"):
        return problem
    parent, _, key = problem.path.rpartition(".")
    if parent.endswith(".gate"):
        close = difflib.get_close_matches(key, list(Gate.model_fields), n=1)
        message = f"unknown key (did you mean `{close[0]}`?)" if close else f"unknown key; a gate has: {', '.join(Gate.model_fields)}"
        return dataclasses.replace(problem, message=message)
    owners = _OWNERS.get(key)
    if owners and kind not in owners:
        message = f"`{key}` is only for {' and '.join(_KIND_NAMES[o] for o in owners)}; this is a {kind} rule"
    else:
        close = difflib.get_close_matches(key, keys_of(kind), n=1)
        message = f"unknown key (did you mean `{close[0]}`?)" if close else f"unknown key; a {kind} rule has: {', '.join(keys_of(kind))}"
    return dataclasses.replace(problem, message=message)


def _finish(parsed: list[_Parsed], problems: list[Problem], files: tuple[Path, ...], path: Path | None) -> RuleSet:
    # Cross-rule checks read the raw mappings, so that a rule with an unrelated mistake still
    # counts for duplicate ids and `from:` targets: every problem shows up in one run.
    first: dict[str, tuple[str, int | None]] = {}
    declared: dict[str, dict[str, Any]] = {}
    rules: list[Rule] = []
    for located, i, raw, rule in parsed:
        rule_id = raw.get("id")
        if not isinstance(rule_id, str):
            continue
        where = (located.source, located.line_of(("rules", i, "id")))
        if rule_id in first:
            src, line = first[rule_id]
            problems.append(Problem(where[0], where[1], f"rules[{i}].id",
                                    f"duplicate id {rule_id!r}: already used at {src}:{line}; ids must be unique across all rule files"))
            continue
        first[rule_id] = where
        declared[rule_id] = raw
        if rule is not None:
            rules.append(rule)
    for located, i, raw, _rule in parsed:
        rule_id = raw.get("id")  # any YAML value: `id: [a]` must not end the check with a TypeError
        if "from" in raw and isinstance(rule_id, str) and declared.get(rule_id) is raw:
            message = _source_problem(raw, declared)
            if message:
                loc = ("rules", i, "from")
                problems.append(Problem(located.source, located.line_of(loc), format_loc(loc), message))
    if problems:
        order = {str(f): n for n, f in enumerate(files)}
        raise ValidationFailed(sorted(problems, key=lambda p: (order.get(p.source, len(order)), p.line or 0)))
    if not rules:
        raise ValidationFailed([Problem(str(path or "<rules>"), None, "", "no rules defined; add at least one under `rules:`")])
    if not any(rule.enabled for rule in rules):
        log.warning("%s: every rule is disabled; the monitor will ask nothing", path)
    return RuleSet(rules=rules, files=files, path=path, origins=first)


def _source_problem(raw: dict[str, Any], declared: dict[str, dict[str, Any]]) -> str | None:
    source = raw.get("from")
    if not isinstance(source, str):
        return None  # the per-rule validation already said so
    target = declared.get(source)
    texts = [rule_id for rule_id, r in declared.items() if kind_of(r) == "text"]
    if target is None:
        known = f"; text rules: {', '.join(texts)}" if texts else "; there is no text rule (answer: text) to match on"
        return f"no rule with id {source!r}{known}"
    kind = kind_of(target)
    if kind != "text":
        return f"{source!r} is a {kind or 'broken'} rule; `from` must name a text rule (answer: text)"
    if raw.get("enabled", True) is not False and target.get("enabled", True) is False:
        return f"rule {source!r} is disabled, so this rule could never fire; enable it or disable this rule"
    return None
