"""No input makes `audio-monitor check` crash or hang: every malformed config, rule file or `--set`
is answered with `FILE:LINE: ...` lines (or `FILE: ...`, `--set: ...`) and exit 1.

Specific hostile inputs first (a NUL byte, an alias inside its own anchor, an alias bomb, nesting
10 000 deep, a `rules:` path that is not there, garbage `--set`s), then mutated copies of the
shipped config and rule files (hypothesis). Everything runs the real command line in-process
(`monitor.cli.main`); two cases go through a separate process to see what a user's terminal shows.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import monitor.rules  # noqa: F401  (imported up front: the first check must not pay for it)
from monitor.cli import main

REPO = Path(__file__).resolve().parent.parent
SHIPPED_RULES = REPO / "rules" / "home.yaml"
SHIPPED_CONFIGS = sorted((REPO / "configs").glob("*.yaml"))
SECONDS = 2.0  # a hostile file is refused in well under this (the fuzzer's deadline too)
UNSET = "AM_FAILSAFE_UNSET_VAR"


@dataclass
class Outcome:
    code: int | None
    stdout: str
    stderr: str
    seconds: float

    @property
    def lines(self) -> list[str]:
        return self.stderr.splitlines()


def check(capsys: pytest.CaptureFixture[str], config: Path, *args: str) -> Outcome:
    """`audio-monitor check -c CONFIG ARGS...` in this process; an uncaught exception propagates."""
    capsys.readouterr()
    started = time.monotonic()
    try:
        code: int | None = main(["check", "-c", str(config), *args])
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) or exc.code is None else 1
    seconds = time.monotonic() - started
    out, err = capsys.readouterr()
    return Outcome(code, out, err, seconds)


def assert_refused(outcome: Outcome, *sources: Path | str) -> None:
    """Exit 1, quickly, no traceback, and every stderr line starts with one of `sources`."""
    assert outcome.code == 1, outcome
    assert outcome.lines, outcome
    assert "Traceback" not in outcome.stderr
    prefixes = tuple(f"{s}:" for s in sources)
    for line in outcome.lines:
        assert line.startswith(prefixes), (line, prefixes)
    assert outcome.seconds < SECONDS, outcome.seconds


def layout(root: Path, config_text: str | bytes | None = None, rules_text: str | bytes | None = None,
           config: Path = REPO / "configs" / "monitor.yaml") -> tuple[Path, Path]:
    """ROOT/configs/monitor.yaml and ROOT/rules/home.yaml, copies of the shipped ones unless given;
    the shipped config's `rules: ../rules` then names the copy."""
    (root / "configs").mkdir(parents=True, exist_ok=True)
    (root / "rules").mkdir(exist_ok=True)
    cfg, rules = root / "configs" / "monitor.yaml", root / "rules" / "home.yaml"
    for path, text, original in ((cfg, config_text, config), (rules, rules_text, SHIPPED_RULES)):
        if text is None:
            shutil.copyfile(original, path)
        elif isinstance(text, bytes):
            path.write_bytes(text)
        else:
            path.write_text(text)
    return cfg, rules


def shipped(path: Path) -> str:
    return path.read_text()


def bomb(levels: int = 9) -> str:
    """A few lines that stand for 9**levels values ("billion laughs")."""
    names = [f"l{i}" for i in range(levels)]
    lines = [f"x-{names[0]}: &{names[0]} [x, x, x, x, x, x, x, x, x]"]
    for prev, name in zip(names, names[1:]):
        lines.append(f"x-{name}: &{name} [{', '.join(['*' + prev] * 9)}]")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------- hostile config files


def test_nul_byte_in_the_config_is_a_located_problem(capsys, tmp_path):
    text = shipped(REPO / "configs" / "monitor.yaml").replace("name: Living room", "name: Living\0room")
    cfg, _ = layout(tmp_path, config_text=text)
    outcome = check(capsys, cfg)
    assert_refused(outcome, cfg)
    line = text[: text.index("\0")].count("\n") + 1
    assert outcome.lines == [f"{cfg}:{line}: control character U+0000 is not allowed in YAML (a NUL byte or a binary file?)"]


@pytest.mark.parametrize("text, expected", [
    ("node_id: kitchen\nx: &a [*a]\n", ":2: recursive alias"),
    ("node_id: kitchen\naudio: &a\n  source: *a\n", ":2: recursive alias"),
    ("node_id: kitchen\naudio: &a {<<: *a}\n", ":2: recursive alias"),
])
def test_an_alias_inside_its_own_anchor_is_refused(capsys, tmp_path, text, expected):
    cfg, _ = layout(tmp_path, config_text=text)
    outcome = check(capsys, cfg)
    assert_refused(outcome, cfg)
    assert outcome.lines[0].startswith(f"{cfg}{expected}"), outcome.lines


def test_an_alias_bomb_is_refused_at_a_bounded_cost(capsys, tmp_path):
    cfg, _ = layout(tmp_path, config_text="node_id: kitchen\n" + bomb())
    outcome = check(capsys, cfg)
    assert_refused(outcome, cfg)
    assert re.fullmatch(rf"{re.escape(str(cfg))}:\d+: too many values \(alias expansion\?\): more than \d+", outcome.lines[0])


def test_a_merge_key_bomb_is_refused_too(capsys, tmp_path):
    text = "node_id: kitchen\nx-a: &a {k0: 1, k1: 1, k2: 1, k3: 1, k4: 1, k5: 1, k6: 1, k7: 1, k8: 1}\n"
    for prev, name in zip("abcdefgh", "bcdefghi"):
        text += f"x-{name}: &{name} {{<<: [{', '.join(['*' + prev] * 9)}], z{name}: 1}}\n"
    cfg, _ = layout(tmp_path, config_text=text)
    outcome = check(capsys, cfg)
    assert_refused(outcome, cfg)
    assert "too many values" in outcome.stderr


@pytest.mark.parametrize("text", ["node_id: kitchen\naudio: " + "[" * 10_000 + "\n",
                                  "node_id: kitchen\naudio: " + "{a: " * 10_000 + "\n",
                                  "node_id: kitchen\n" + "".join(" " * i + f"k{i}:\n" for i in range(1000))])
def test_nesting_thousands_deep_is_refused(capsys, tmp_path, text):
    cfg, _ = layout(tmp_path, config_text=text)
    outcome = check(capsys, cfg)
    assert_refused(outcome, cfg)
    assert re.fullmatch(rf"{re.escape(str(cfg))}:\d+: nested too deeply.*", outcome.lines[0]), outcome.lines


@pytest.mark.parametrize("value, message", [
    ("2001-13-45", "cannot read the value '2001-13-45': month must be in 1..12"),
    ("9" * 5000, "cannot read the value"),
    ("!!float abc", "cannot read the value 'abc'"),
])
def test_values_yaml_cannot_construct_are_located(capsys, tmp_path, value, message):
    cfg, _ = layout(tmp_path, config_text=f"node_id: kitchen\nname: {value}\n")
    outcome = check(capsys, cfg)
    assert_refused(outcome, cfg)
    assert outcome.lines[0].startswith(f"{cfg}:2: {message}"), outcome.lines


@pytest.mark.parametrize("key", ["? [[1]]\n: x\n", "? {a: 1}\n: x\n"])
def test_keys_that_are_not_plain_values_are_located(capsys, tmp_path, key):
    cfg, _ = layout(tmp_path, config_text="node_id: kitchen\n" + key)
    outcome = check(capsys, cfg)
    assert_refused(outcome, cfg)
    assert outcome.lines[0].startswith(f"{cfg}:2: a key must be a plain value")


def test_a_huge_file_is_not_read_to_the_end(capsys, tmp_path):
    cfg, _ = layout(tmp_path, config_text="node_id: kitchen\n" + "# padding\n" * 200_000)
    outcome = check(capsys, cfg)
    assert_refused(outcome, cfg)
    assert outcome.lines == [f"{cfg}: file too large for a config, rule or labels file (over 1 MiB)"]


def test_a_file_that_is_not_utf8_is_located(capsys, tmp_path):
    cfg, _ = layout(tmp_path, config_text=b"node_id: kitchen\nname: K\xfcche\n")
    outcome = check(capsys, cfg)
    assert_refused(outcome, cfg)
    assert outcome.lines == [f"{cfg}:2: not UTF-8 text (byte 0xfc); save the file as UTF-8"]


def test_a_key_with_a_line_break_stays_on_one_line(capsys, tmp_path):
    cfg, _ = layout(tmp_path, config_text='node_id: kitchen\n"a\\nb\\u2028c": 1\n')
    outcome = check(capsys, cfg)
    assert_refused(outcome, cfg)
    assert outcome.lines == [f"{cfg}:2: a\\nb\\u2028c: unknown key (check the spelling; see the config reference in README.md)"]


# ---------------------------------------------------------------------------- `rules:` in the config


def test_a_rules_path_that_is_not_there_is_reported_at_the_config_line(capsys, tmp_path):
    text = shipped(REPO / "configs" / "monitor.yaml").replace("rules: ../rules ", "rules: ../no-such-rules")
    cfg, _ = layout(tmp_path, config_text=text)
    line = next(n for n, t in enumerate(text.splitlines(), 1) if t.startswith("rules:"))
    outcome = check(capsys, cfg)
    assert_refused(outcome, cfg)
    assert outcome.lines == [f"{cfg}:{line}: rules: not found: {tmp_path / 'no-such-rules'} "
                             "(name a rule file or a folder of *.yaml files)"]


def test_a_rules_folder_without_rule_files_is_reported_at_the_config_line(capsys, tmp_path):
    (tmp_path / "empty").mkdir()
    cfg, _ = layout(tmp_path, config_text="node_id: kitchen\nrules: ../empty\n")
    outcome = check(capsys, cfg)
    assert_refused(outcome, cfg)
    assert outcome.lines == [f"{cfg}:2: rules: no *.yaml rule files in the folder {tmp_path / 'empty'}"]


def test_a_rules_path_from_set_is_reported_against_set(capsys, tmp_path):
    cfg, _ = layout(tmp_path)
    outcome = check(capsys, cfg, "--set", f"rules={tmp_path / 'nope'}")
    assert_refused(outcome, "--set")
    assert outcome.lines == [f"--set: rules: not found: {tmp_path / 'nope'} (name a rule file or a folder of *.yaml files)"]


def test_rules_naming_a_device_file_is_not_read_forever(capsys, tmp_path):
    cfg, _ = layout(tmp_path)
    outcome = check(capsys, cfg, "--set", "rules=/dev/zero")
    assert_refused(outcome, "/dev/zero")
    assert outcome.lines == ["/dev/zero: file too large for a config, rule or labels file (over 1 MiB)"]


# ---------------------------------------------------------------------------- hostile rule files


@pytest.mark.parametrize("text, expected", [
    (shipped(SHIPPED_RULES).replace("id: doorbell", "id: door\0bell"), "control character U+0000"),
    ("rules:\n  - &r {id: a, ask: b, x: [*r]}\n", "recursive alias"),
    (bomb() + "rules: []\n", "too many values (alias expansion?)"),
    ("rules: " + "[" * 10_000 + "\n", "nested too deeply"),
    ("rules:\n  - id: a\n    ask: b\n    hold: 2001-02-30\n", "cannot read the value"),
])
def test_hostile_rule_files_are_located(capsys, tmp_path, text, expected):
    cfg, rules = layout(tmp_path, rules_text=text)
    outcome = check(capsys, cfg)
    assert_refused(outcome, rules)
    assert re.match(rf"{re.escape(str(rules))}:\d+: {re.escape(expected)}", outcome.lines[0]), outcome.lines


@pytest.mark.parametrize("rule", [
    "  - {id: a, answer: [text], ask: b}\n",
    "  - {id: [a], from: b, match: c}\n",
    "  - {id: {a: 1}, from: b, match: c}\n",
])
def test_rule_values_of_the_wrong_shape_are_located(capsys, tmp_path, rule):
    cfg, rules = layout(tmp_path, rules_text="rules:\n  - {id: b, answer: text, ask: t}\n" + rule)
    outcome = check(capsys, cfg)
    assert_refused(outcome, rules)


# ---------------------------------------------------------------------------- --set garbage


BAD_SETS = [  # (the --set arguments, how the problem line starts)
    (["="], "--set: --set '=': expected key.path=value"),
    (["a..b=1"], "--set: --set 'a..b=1': expected key.path=value"),
    (["windows.hop"], "--set: --set 'windows.hop': expected key.path=value"),
    (["audio=5"], "--set: audio: Input should be a valid dictionary"),
    (["windows.hop=[*a"], "--set: windows.hop: '[*a' is not a duration"),
    (["audio.source.x=1"], "--set: audio.source: Input should be a valid string"),  # not the file's `source: mic`
    (["audio=5", "audio.source.x=1"], "--set: audio.source: Input should be a valid string"),
    (["nothing.here=1"], "--set: nothing: unknown key"),  # not the file's line 1
    (["windows.hop=&a [*a]"], "--set: windows.hop: "),
    (["windows.hop=" + bomb().replace("\n", ", ").join("{}")], "--set: windows.hop: "),
    (["windows.hop=2\0s"], "--set: windows.hop: "),
    (["audio.sou\0rce=mic"], "--set: audio.sou\\x00rce: unknown key"),  # the NUL shown, not sent to the terminal
    (["node_id=" + "[" * 10_000], "--set: node_id: "),  # yaml.safe_load: RecursionError
]


def test_bad_set_values_are_set_problems(capsys, tmp_path):
    """Every garbage `--set` gives `--set: ...` lines and exit 1 (checked all, reported together)."""
    cfg, _ = layout(tmp_path)
    wrong = []
    for overrides, expected in BAD_SETS:
        args = [a for o in overrides for a in ("--set", o)]
        try:
            outcome = check(capsys, cfg, *args)
            assert_refused(outcome, "--set")
            assert any(line.startswith(expected) for line in outcome.lines), outcome.lines
        except (Exception, AssertionError) as exc:  # noqa: BLE001 (a crash is one more wrong answer)
            wrong.append(f"{[o[:40] for o in overrides]}: {exc!r}"[:400])
    assert not wrong, "\n".join(wrong)


# ---------------------------------------------------------------------------- `check` always checks the rules


def test_check_never_skips_the_rules(capsys, tmp_path, monkeypatch):
    """An ImportError of the rule loader is a bug to see, not a reason to print OK unchecked."""
    cfg, _ = layout(tmp_path)
    monkeypatch.setitem(sys.modules, "monitor.rules", None)
    with pytest.raises(ImportError):
        check(capsys, cfg)


# ---------------------------------------------------------------------------- a separate process


@pytest.mark.parametrize("config_text", ["node_id: kitchen\nname: a\0b\n", "node_id: kitchen\nx: &a [*a]\n"])
def test_the_console_shows_one_line_and_no_traceback(tmp_path, config_text):
    cfg, _ = layout(tmp_path, config_text=config_text)
    out = subprocess.run([sys.executable, "-m", "monitor", "check", "-c", str(cfg)], capture_output=True, text=True,
                         cwd=REPO, timeout=60, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert out.returncode == 1, out
    assert "Traceback" not in out.stderr
    assert out.stderr.startswith(f"{cfg}:2: ") and out.stderr.count("\n") == 1, out.stderr


# ---------------------------------------------------------------------------- mutated shipped files (hypothesis)

KEY_LINE = re.compile(r"^(\s*(?:-\s+)?)([A-Za-z_][\w-]*)(\s*:)(.*)$")
ODD_VALUES = [
    "[1, 2]", "{a: 1}", "[]", "{}", "true", "no", "null", "~", "''", '""', "1e999", "-1e999", ".nan", ".inf",
    "99999999999999999999999999", "9" * 5000, "-5s", "-1", "-0.5", "0", "2001-13-45", "2001-02-03",
    f"${{{UNSET}}}", f"x${{{UNSET}}}y", f"${{{UNSET}:-}}", "${", "!!binary abc", "!!python/object:os.system ls",
    "!!float x", "!!int 0xZZ", "!foo bar", '"\\0"', '"a\\nb"', "'" + "x" * 3000 + "'", "*undefined", "&anchor",
    "[*a", "&s [*s]", "&m {<<: *m}", "|", ">-", "- a", "a: b", ": x", "'unterminated", "@", "`", "%", "?",
    "1h30m", "500ms", "mdi:x", "file:", "file:/nonexistent.wav", "../rules", ".", "..", "/", "rules",
]
ODD_BYTES = [b"\x00", b"\x01", b"\x07", b"\x08", b"\x0b", b"\x0c", b"\x1b", b"\x7f", b"\x85", b"\xc2\x85", b"\xe2\x80\xa8",
             b"\xff", b"\xfe", b"\t", b"\r", b"\n", b" ", b":", b"-", b"[", b"{", b"]", b"}", b"&", b"*", b"!", b"#",
             b"'", b'"', b"|", b">", b"%", b"@", b"`", b",", b"?", b"<<: ", b"---\n", b"...\n"]


def _lines_op(draw: st.DrawFn, text: str, fn: Callable[[list[str], int, re.Match[str] | None], None]) -> str:
    lines = text.split("\n")
    keyed = [i for i, line in enumerate(lines) if KEY_LINE.match(line)]
    index = draw(st.sampled_from(keyed)) if keyed and draw(st.booleans()) else draw(st.integers(0, len(lines) - 1))
    fn(lines, index, KEY_LINE.match(lines[index]))
    return "\n".join(lines)


@st.composite
def key_mutation(draw: st.DrawFn, text: str) -> str:
    """Rename, delete or duplicate a key."""
    how = draw(st.sampled_from(["rename", "delete", "duplicate"]))
    new_key = draw(st.sampled_from(["id", "ask", "rules", "audio", "sourc", "x-a", "<<", "true", "1", "~", "a b", "Id"]))

    def apply(lines: list[str], i: int, m: re.Match[str] | None) -> None:
        if how == "delete":
            del lines[i]
        elif how == "duplicate":
            lines.insert(i, lines[i])
        elif m:
            lines[i] = f"{m[1]}{new_key}{m[3]}{m[4]}"
    return _lines_op(draw, text, apply)


@st.composite
def value_mutation(draw: st.DrawFn, text: str) -> str:
    """Replace a value with one of another type, a huge or negative number, an unset ${VAR}, ..."""
    value = draw(st.sampled_from(ODD_VALUES) | st.text(max_size=20))

    def apply(lines: list[str], i: int, m: re.Match[str] | None) -> None:
        if m:
            lines[i] = f"{m[1]}{m[2]}{m[3]} {value}"
        else:
            lines[i] = lines[i] + " " + value
    return _lines_op(draw, text, apply)


@st.composite
def structure_mutation(draw: st.DrawFn, text: str) -> str:
    """Mapping to list, anchors and aliases (self-referencing ones too), merges, indent and dedent."""
    how = draw(st.sampled_from(["to_list", "anchor", "alias", "self_alias", "merge", "indent", "dedent", "tab", "move"]))
    spaces = " " * draw(st.integers(1, 6))
    anchor = draw(st.sampled_from(["a", "b"]))

    def apply(lines: list[str], i: int, m: re.Match[str] | None) -> None:
        line = lines[i]
        if how == "to_list":
            lines[i] = re.sub(r"^(\s*)", r"\1- ", line, count=1)
        elif how == "anchor" and m:
            lines[i] = f"{m[1]}{m[2]}{m[3]} &{anchor}{m[4]}"
        elif how == "alias" and m:
            lines[i] = f"{m[1]}{m[2]}{m[3]} *{anchor}"
        elif how == "self_alias" and m:
            lines[i] = f"{m[1]}{m[2]}{m[3]} &{anchor} [*{anchor}]"
        elif how == "merge" and m:
            lines.insert(i, f"{m[1].replace('-', ' ')}<<: *{anchor}")
        elif how == "indent":
            lines[i] = spaces + line
        elif how == "dedent":
            lines[i] = line[len(spaces):] if line.startswith(spaces) else line.lstrip()
        elif how == "tab":
            lines[i] = "\t" + line
        elif how == "move":
            lines.insert(draw(st.integers(0, len(lines))), lines.pop(i))
    return _lines_op(draw, text, apply)


@st.composite
def byte_mutation(draw: st.DrawFn, data: bytes) -> bytes:
    """Insert, delete or replace bytes: control characters, NUL, broken UTF-8, YAML punctuation."""
    how = draw(st.sampled_from(["insert", "delete", "replace"]))
    chunk = draw(st.sampled_from(ODD_BYTES) | st.binary(min_size=1, max_size=4))
    at = draw(st.integers(0, len(data)))
    if how == "insert":
        return data[:at] + chunk + data[at:]
    end = min(len(data), at + draw(st.integers(1, 8)))
    if how == "delete":
        return data[:at] + data[end:]
    return data[:at] + chunk + data[end:]


@st.composite
def mutated(draw: st.DrawFn, original: str) -> bytes:
    """A shipped file after one to four random mutations of any kind."""
    text = original
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from([key_mutation, value_mutation, structure_mutation, "bytes"]))
        if kind != "bytes":
            text = draw(kind(text))  # type: ignore[operator]
    data = text.encode("utf-8")
    for _ in range(draw(st.integers(0, 3))):
        data = draw(byte_mutation(data))
    return data


def assert_failsafe(outcome: Outcome, *sources: Path | str) -> None:
    """Exit 0 (the mutation was harmless) or 1 with every line naming one of `sources`."""
    event(f"exit {outcome.code}")  # --hypothesis-show-statistics: how many mutations were caught
    assert "Traceback" not in outcome.stderr, outcome.stderr
    assert outcome.code in (0, 1), outcome
    if outcome.code == 0:
        assert ": OK (" in outcome.stdout, outcome
    else:
        assert_refused(outcome, *sources)


FUZZ = settings(max_examples=150, deadline=2000, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large])


@FUZZ
@given(st.data())
def test_mutated_shipped_configs_never_crash(capsys, monkeypatch, data):
    monkeypatch.delenv(UNSET, raising=False)
    original = data.draw(st.sampled_from(SHIPPED_CONFIGS), label="config")
    text = data.draw(mutated(original.read_text()), label="mutated config")
    with tempfile.TemporaryDirectory() as tmp:
        cfg, _ = layout(Path(tmp), config_text=text, config=original)
        try:
            outcome = check(capsys, cfg)
        except Exception as exc:  # noqa: BLE001 (the point: no exception may escape)
            pytest.fail(f"check raised {exc!r} on:\n{text!r}")
        assert_failsafe(outcome, cfg, "--set")


@FUZZ
@given(st.data())
def test_mutated_shipped_rules_never_crash(capsys, monkeypatch, data):
    monkeypatch.delenv(UNSET, raising=False)
    text = data.draw(mutated(SHIPPED_RULES.read_text()), label="mutated rules")
    with tempfile.TemporaryDirectory() as tmp:
        cfg, rules = layout(Path(tmp), rules_text=text)
        try:
            outcome = check(capsys, cfg)
        except Exception as exc:  # noqa: BLE001
            pytest.fail(f"check raised {exc!r} on:\n{text!r}")
        assert_failsafe(outcome, rules)
