"""`compare --apply`'s edit of a rule file: only the rule's ask and threshold lines change, whatever the layout."""

from __future__ import annotations

import difflib
import shutil
from pathlib import Path

import pytest

from monitor.rules import load_rules
from monitor.tuning.rulefile import ApplyError, apply_phrasing
from tests.conftest import REPO

NEW = "Is glass shattering or breaking in this recording? Answer yes or no."


def changed(old: str, new: str) -> list[str]:
    """The old file's lines that changed (-) and the new ones (+), in order."""
    return [line for line in difflib.unified_diff(old.splitlines(), new.splitlines(), n=0, lineterm="")
            if line[:1] in "+-" and not line.startswith(("---", "+++"))]


def edit(tmp_path: Path, text: str, rule: str = "glass", ask: str = NEW, threshold: float = 0.62) -> str:
    path = tmp_path / "rules.yaml"
    path.write_text(text)
    apply_phrasing(path, rule, ask, threshold)
    assert load_rules(path).get(rule).ask == ask
    return path.read_text()


def test_the_shipped_home_rules_keep_every_comment(tmp_path):
    """A folded question stays folded; the rule's release moves with its threshold (the hysteresis gap kept)."""
    path = tmp_path / "home.yaml"
    shutil.copy(REPO / "rules" / "home.yaml", path)
    old = path.read_text()
    before = load_rules(path).get("fall")
    long = ("Does this recording contain the sound of a person falling down hard on the floor, a thud and then "
            "a groan of pain, or a cry for help? Answer yes or no.")
    diff = apply_phrasing(path, "fall", long, 0.42)
    after = load_rules(path).get("fall")
    assert (after.ask, after.threshold) == (long, 0.42)
    assert after.release == pytest.approx(0.42 - (before.threshold - before.release))
    lines = changed(old, path.read_text())
    assert all(not line[1:].lstrip().startswith("#") for line in lines)  # no comment line touched
    assert sum(1 for line in lines if line.startswith("-")) == 4  # 2 lines of the question, threshold, release
    assert "+    ask: >-" not in lines and any(line.startswith("+      ") for line in lines)  # still folded
    assert diff[0].startswith("---") and len(old.splitlines()) == len(path.read_text().splitlines())
    others = {r.id: r for r in load_rules(REPO / "rules" / "home.yaml").rules if r.id != "fall"}
    assert {r.id: r for r in load_rules(path).rules if r.id != "fall"} == others


def test_a_rule_without_a_threshold_gets_one_after_its_question(tmp_path):
    text = "rules:\n- id: glass\n  ask: 'Glass? Answer yes or no.'   # short\n  gate: {min_dbfs: -50}\n"
    new = edit(tmp_path, text)
    assert changed(text, new) == ["-  ask: 'Glass? Answer yes or no.'   # short",
                                  f"+  ask: '{NEW}' # short", "+  threshold: 0.62"]


def test_values_aligned_by_hand_elsewhere_stay_as_written(tmp_path):
    text = ("rules:\n"
            "  - id: dog\n"
            "    ask:       Dog? Answer yes or no.\n"
            "    patience:  2\n"
            "  - id: glass\n"
            "    name:      Glass   # aligned\n"
            "    ask:       \"Glass? Answer yes or no.\"\n"
            "    threshold: 0.5\n"
            "    hold:      1m\n")
    new = edit(tmp_path, text, threshold=0.575)
    assert changed(text, new) == ['-    ask:       "Glass? Answer yes or no."', "-    threshold: 0.5",
                                  f'+    ask: "{NEW}"', "+    threshold: 0.575"]


def test_the_last_key_of_the_last_rule(tmp_path):
    text = "# mine\nrules:\n  - id: glass\n    threshold: 0.9\n    ask: Glass? Answer yes or no.\n"
    new = edit(tmp_path, text)
    assert changed(text, new) == ["-    threshold: 0.9", "-    ask: Glass? Answer yes or no.",
                                  "+    threshold: 0.62", f"+    ask: {NEW}"]


@pytest.mark.parametrize("text, rule, why", [
    ("rules:\n  - id: glass\n    ask: Glass?\n", "dog", "no rule 'dog' in it"),
    ("rules:\n  - id: words\n    answer: text\n    ask: What is said?\n", "words", "not a yes/no rule"),
    ("rules: [\n", "glass", "cannot read it as YAML"),
])
def test_what_cannot_be_applied_leaves_the_file_as_it_was(tmp_path, text, rule, why):
    path = tmp_path / "rules.yaml"
    path.write_text(text)
    with pytest.raises(ApplyError, match=why):
        apply_phrasing(path, rule, NEW, 0.5)
    assert path.read_text() == text
    with pytest.raises(ApplyError, match="would not validate"):
        path.write_text("rules:\n  - id: glass\n    ask: Glass?\n")
        apply_phrasing(path, "glass", NEW, 1.5)
    assert path.read_text() == "rules:\n  - id: glass\n    ask: Glass?\n" and not list(tmp_path.glob(".*"))
