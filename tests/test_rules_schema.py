"""Rule files: the shipped rules, and FILE:LINE messages for every kind of mistake, all at once."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_rules_support import ruleset_for

from monitor.rules import BINARY_SENSOR_CLASSES, MatchRule, TextRule, YesNoRule, load_rules, parse_rules
from monitor.yamlsource import ValidationFailed

REPO = Path(__file__).resolve().parent.parent


def problems_of(path: Path) -> list[str]:
    with pytest.raises(ValidationFailed) as info:
        load_rules(path)
    return [str(p) for p in info.value.problems]


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "monitor", *args], capture_output=True, text=True, env=env, cwd=REPO, timeout=60)


# ---------------------------------------------------------------------------- the shipped rules


def test_shipped_rules_cover_the_standing_questions() -> None:
    rules = load_rules(REPO / "rules")
    assert set(rules.ids) == {
        "fall", "distress", "smoke_alarm", "glass_breaking", "baby_crying", "coughing", "doorbell",
        "dog_barking", "water_running", "speech", "call_for_help",
    }
    assert rules.files == (REPO / "rules" / "home.yaml",)
    for rule in rules:
        assert rule.enabled and rule.name and rule.icon
        if isinstance(rule, YesNoRule):
            assert rule.ask.startswith("Does this recording contain") and rule.ask.endswith("Answer yes or no."), rule.id
            assert rule.device_class in BINARY_SENSOR_CLASSES, rule.id
            assert rule.gate.min_dbfs is not None, f"{rule.id}: every sound rule skips silent windows"
            assert 0 < rule.release < rule.threshold, f"{rule.id}: a hysteresis band"
    assert isinstance(rules["speech"], TextRule) and rules["speech"].gate.speech
    help_rule = rules["call_for_help"]
    assert isinstance(help_rule, MatchRule) and help_rule.source == "speech"
    for said in ("Help me!", "somebody help", "I've fallen and I can't get up", "Call an ambulance", "call 911"):
        assert help_rule.pattern.search(said), said
    for said in ("Can you help with the dishes?", "That was helpful", "the fall colours are nice"):
        assert not help_rule.pattern.search(said), said


@pytest.mark.parametrize("config", ["configs/monitor.yaml", "configs/cpu.yaml"])
def test_shipped_config_and_rules_pass_check(config: str) -> None:
    proc = run_cli("check", "-c", config)
    assert proc.returncode == 0, proc.stderr
    assert "11 rule(s)" in proc.stdout


# ---------------------------------------------------------------------------- every mistake, all at once

BROKEN_A = """\
rules:
  - id: fall
    ask: Does this recording contain a fall? Answer yes or no.
    treshold: 0.8
  - id: loud
    ask: Is it loud?
    threshold: 1.5
  - id: band
    ask: Is it?
    threshold: 0.5
    release: 0.7
  - id: speech
    answer: text
    ask: What is said?
  - id: help
    from: speech
    match: '(help'
  - id: night
    ask: Is it night?
    schedule: ["22:00-07:00", "mon-fry 08:00-09:00"]
"""

BROKEN_B = """\
rules:
  - id: fall
    ask: Again?
  - id: wrong_source
    from: ghost
    match: 'x'
"""


def test_a_broken_rule_folder_reports_every_problem_with_file_and_line(tmp_path: Path) -> None:
    folder = tmp_path / "rules"
    folder.mkdir()
    (folder / "a.yaml").write_text(BROKEN_A)
    (folder / "b.yaml").write_text(BROKEN_B)
    a, b = folder / "a.yaml", folder / "b.yaml"
    assert problems_of(folder) == [
        f"{a}:4: rules[0].treshold: unknown key (did you mean `threshold`?)",
        f"{a}:7: rules[1].threshold: must be between 0 and 1 (got 1.5)",
        f"{a}:11: rules[2].release: must not be above threshold (0.5): "
        "the rule would switch OFF while still at the level that switched it ON",
        f"{a}:17: rules[4].match: not a valid regular expression: missing ), unterminated subpattern at position 0",
        f"{a}:20: rules[5].schedule[1]: 'fry' is not a day; use mon, tue, wed, thu, fri, sat, sun (or weekdays, weekends, daily)",
        f"{b}:2: rules[0].id: duplicate id 'fall': already used at {a}:2; ids must be unique across all rule files",
        f"{b}:5: rules[1].from: no rule with id 'ghost'; text rules: speech",
    ]


def test_check_prints_the_problems_and_exits_1(tmp_path: Path) -> None:
    folder = tmp_path / "rules"
    folder.mkdir()
    (folder / "a.yaml").write_text(BROKEN_A)
    (folder / "b.yaml").write_text(BROKEN_B)
    config = tmp_path / "monitor.yaml"
    config.write_text("node_id: test\nrules: rules\nstate_dir: state\n")
    proc = run_cli("check", "-c", str(config))
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 7 and "Traceback" not in proc.stderr
    assert lines[0].startswith(f"{folder / 'a.yaml'}:4: rules[0].treshold:")
    assert lines[-1].startswith(f"{folder / 'b.yaml'}:5: rules[1].from:")


SINGLE = [
    ("unknown key with a suggestion", "  - id: a\n    ask: q\n    cooldwn: 1m\n", 4, "rules[0].cooldwn",
     "unknown key (did you mean `cooldown`?)"),
    ("a key of another kind", "  - id: a\n    answer: text\n    ask: q\n    patience: 2\n", 5, "rules[0].patience",
     "`patience` is only for yes_no rules; this is a text rule"),
    ("match keys on a yes_no rule", "  - id: a\n    ask: q\n    match: x\n", 4, "rules[0].match", "`match` is only for match rules"),
    ("an unknown gate key", "  - id: a\n    ask: q\n    gate: {min_db: -40}\n", 4, "rules[0].gate.min_db", "did you mean `min_dbfs`?"),
    ("threshold below 0", "  - id: a\n    ask: q\n    threshold: -0.1\n", 4, "rules[0].threshold", "must be between 0 and 1"),
    ("threshold as yes", "  - id: a\n    ask: q\n    threshold: yes\n", 4, "rules[0].threshold", "expected a number, not true/false"),
    ("release above threshold", "  - id: a\n    ask: q\n    threshold: 0.6\n    release: 0.61\n", 5, "rules[0].release",
     "must not be above threshold (0.6)"),
    ("bad regex", "  - id: s\n    answer: text\n    ask: q\n  - id: m\n    from: s\n    match: '[a-'\n", 7, "rules[1].match",
     "not a valid regular expression"),
    ("regex matching everything", "  - id: s\n    answer: text\n    ask: q\n  - id: m\n    from: s\n    match: 'help|'\n", 7,
     "rules[1].match", "matches an empty transcript"),
    ("from a yes_no rule", "  - id: y\n    ask: q\n  - id: m\n    from: y\n    match: x\n", 5, "rules[1].from",
     "'y' is a yes_no rule; `from` must name a text rule"),
    ("from a disabled text rule", "  - id: s\n    answer: text\n    ask: q\n    enabled: false\n  - id: m\n    from: s\n    match: x\n", 7,
     "rules[1].from", "rule 's' is disabled"),
    ("duplicate id in one file", "  - id: a\n    ask: q\n  - id: a\n    ask: r\n", 4, "rules[1].id", "duplicate id 'a': already used at"),
    ("bad id", "  - id: Baby-Crying\n    ask: q\n", 2, "rules[0].id", "use lower-case letters, digits and _"),
    ("missing ask", "  - id: a\n    threshold: 0.5\n", 2, "rules[0].ask", "required key is missing"),
    ("bad answer", "  - id: a\n    ask: q\n    answer: yesno\n", 4, "rules[0].answer", "must be yes_no or text (got 'yesno')"),
    ("answer on a match rule", "  - id: s\n    answer: text\n    ask: q\n  - id: m\n    answer: text\n    from: s\n    match: x\n", 6,
     "rules[1].answer", "a rule with `from:` is a match rule"),
    ("unquoted time", "  - id: a\n    ask: q\n    schedule: [20:00]\n", 4, "rules[0].schedule[0]", "put the range in quotes"),
    ("empty schedule", "  - id: a\n    ask: q\n    schedule: []\n", 4, "rules[0].schedule", "an empty schedule would never be active"),
    ("empty range", "  - id: a\n    ask: q\n    schedule: '07:00-07:00'\n", 4, "rules[0].schedule[0]", "is empty"),
    ("bad duration", "  - id: a\n    ask: q\n    hold: 5 minutes\n", 4, "rules[0].hold", "write it like 8s, 2m"),
    ("negative patience", "  - id: a\n    ask: q\n    patience: 0\n", 4, "rules[0].patience", "greater than or equal to 1"),
    ("device class", "  - id: a\n    ask: q\n    device_class: loudness\n", 4, "rules[0].device_class", "'sound'"),
    ("config category", "  - id: a\n    ask: q\n    entity_category: config\n", 4, "rules[0].entity_category", "'diagnostic'"),
    ("device class on a text rule", "  - id: s\n    answer: text\n    ask: q\n    device_class: sound\n", 5, "rules[0].device_class",
     "`device_class` is only for yes_no rules and match rules (from: + match:); this is a text rule"),
    ("icon", "  - id: a\n    ask: q\n    icon: baby\n", 4, "rules[0].icon", "mdi:"),
    ("not a mapping", "  - just a string\n", 2, "rules[0]", "each rule is a mapping"),
]


@pytest.mark.parametrize(("case", "body", "line", "path", "message"), SINGLE, ids=[c[0] for c in SINGLE])
def test_single_mistakes(tmp_path: Path, case: str, body: str, line: int, path: str, message: str) -> None:
    file = tmp_path / "rules.yaml"
    file.write_text("rules:\n" + body)
    (problem,) = problems_of(file)
    assert problem.startswith(f"{file}:{line}: {path}: "), problem
    assert message in problem


FILE_LEVEL = [
    ("yaml syntax", "rules:\n  - id: a\n    ask: [unclosed\n", "YAML syntax error"),
    ("a list at the top", "- id: a\n  ask: q\n", "a rule file is a mapping with one key, `rules:`"),
    ("unknown top-level key", "rule:\n  - id: a\n", "unknown key: a rule file has `rules:` at the top level"),
    ("rules not a list", "rules: {id: a}\n", "expected a list of rules"),
]


@pytest.mark.parametrize(("case", "text", "message"), FILE_LEVEL, ids=[c[0] for c in FILE_LEVEL])
def test_file_level_mistakes_are_one_clear_line(tmp_path: Path, case: str, text: str, message: str) -> None:
    file = tmp_path / "rules.yaml"
    file.write_text(text)
    problems = problems_of(file)
    assert any(p.startswith(f"{file}:") and message in p for p in problems), problems


def test_missing_path_and_empty_folder(tmp_path: Path) -> None:
    assert problems_of(tmp_path / "nope.yaml") == [
        f"{tmp_path / 'nope.yaml'}: not found: `rules:` in the config must name a rule file or a folder of *.yaml files"]
    (tmp_path / "empty").mkdir()
    assert problems_of(tmp_path / "empty") == [f"{tmp_path / 'empty'}: the folder has no *.yaml rule files"]
    (tmp_path / "none.yaml").write_text("rules: []\n")
    assert "no rules defined" in problems_of(tmp_path / "none.yaml")[0]


# ---------------------------------------------------------------------------- defaults and the RuleSet


def test_defaults(tmp_path: Path) -> None:
    rules = ruleset_for(tmp_path, """
rules:
  - id: baby_crying
    ask: "  Does this recording contain
      a baby crying?  "
  - id: lifted
    ask: q
    threshold: 0.05
  - id: words
    answer: text
    ask: What is said?
  - id: m
    from: words
    match: Help
""")
    baby = rules["baby_crying"]
    assert isinstance(baby, YesNoRule)
    assert baby.name == "Baby crying" and baby.ask == "Does this recording contain a baby crying?"
    assert (baby.kind, baby.answer, baby.use, baby.threshold, baby.release) == ("yes_no", "yes_no", "score", 0.7, 0.6)
    assert (baby.patience, baby.hold, baby.cooldown, baby.schedule, baby.enabled) == (1, 0.0, 0.0, None, True)
    assert rules["lifted"].release == 0.0  # threshold - 0.1, never below 0
    words = rules["words"]
    assert isinstance(words, TextRule) and words.max_new_tokens == 64 and words.kind == "text"
    for rule in rules:  # what Home Assistant discovery reads, present on every kind
        assert {"id", "name", "enabled", "answer", "ask", "device_class", "icon", "entity_category"} <= set(dir(rule))
    assert words.device_class is None and words.icon is None
    m = rules["m"]
    assert isinstance(m, MatchRule) and m.kind == "match" and m.ask is None and m.pattern.search("HELP!")


def test_x_keys_hold_yaml_anchors_for_shared_settings(tmp_path: Path) -> None:
    rules = ruleset_for(tmp_path, """
x-loud: &loud
  threshold: 0.6
  gate: {min_dbfs: -40}
rules:
  - id: a
    <<: *loud
    ask: q
  - id: b
    <<: *loud
    ask: r
    threshold: 0.9
""")
    assert (rules["a"].threshold, rules["a"].gate.min_dbfs) == (0.6, -40)
    assert (rules["b"].threshold, rules["b"].release, rules["b"].gate.min_dbfs) == (0.9, 0.8, -40)


def test_ruleset_lookup_and_files(tmp_path: Path) -> None:
    folder = tmp_path / "rules"
    folder.mkdir()
    (folder / "b.yml").write_text("rules:\n  - id: second\n    ask: q\n")
    (folder / "a.yaml").write_text("rules:\n  - id: first\n    ask: q\n    enabled: false\n")
    (folder / ".#a.yaml").write_text("not: [yaml")  # an editor's lock file is not a rule file
    (folder / "notes.txt").write_text("ignored")
    rules = load_rules(folder)
    assert rules.ids == ["first", "second"] and rules.files == (folder / "a.yaml", folder / "b.yml")
    assert rules.path == folder and "first" in rules and "third" not in rules
    assert rules.get("third") is None and rules["second"].id == "second"
    assert [r.id for r in rules.enabled] == ["second"]
    assert rules.where("second") == f"{folder / 'b.yml'}:2"
    with pytest.raises(KeyError):
        rules["third"]


def test_parse_rules_from_text_uses_the_same_checks() -> None:
    with pytest.raises(ValidationFailed) as info:
        parse_rules("rules:\n  - id: a\n    ask: q\n    threshold: 2\n", source="inline")
    assert [str(p) for p in info.value.problems] == ["inline:4: rules[0].threshold: must be between 0 and 1 (got 2)"]
