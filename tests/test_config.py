"""Config loading: defaults, durations, FILE:LINE errors, --set overrides, env expansion, paths."""

from __future__ import annotations

from pathlib import Path

import pytest

from monitor.config import load_config
from monitor.configtypes import format_duration, parse_duration
from monitor.yamlsource import ValidationFailed

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(
    "text, seconds",
    [("8s", 8), ("2m", 120), ("500ms", 0.5), ("1h30m", 5400), ("1.5s", 1.5), (3, 3), (2.5, 2.5), ("10", 10), ("2 min", 120), ("1d", 86400)],
)
def test_durations_parse(text, seconds):
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["-2s", "eight seconds", "5 parsecs", "", True, [1], "2s3"])
def test_bad_durations_rejected(text):
    with pytest.raises(ValueError):
        parse_duration(text)


def test_duration_formatting_round_trips():
    for seconds in (0.5, 8, 120, 3600, 90):
        assert parse_duration(format_duration(seconds)) == seconds


def write(tmp_path: Path, text: str, name: str = "c.yaml") -> Path:
    """A config file, next to the `rules/` folder it names by default (load_config checks it)."""
    p = tmp_path / name
    p.write_text(text)
    some_rules(tmp_path / "rules")
    return p


def some_rules(folder: Path) -> Path:
    """A rules folder `load_config` accepts (it only checks that there is a rule file)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "home.yaml").touch()
    return folder


def test_shipped_configs_are_valid():
    for name in ("monitor.yaml", "cpu.yaml"):
        config = load_config(REPO / "configs" / name)
        assert config.windows.hop <= config.windows.length
        assert config.rules == (REPO / "rules").resolve() or config.rules.resolve() == (REPO / "rules").resolve()


def test_three_errors_reported_at_once_with_lines(tmp_path):
    p = write(tmp_path, "node_id: kitchen\naudio:\n  sorce: mic\n  channels: two\nwindows:\n  length: 8s\n  hop: -2s\n")
    with pytest.raises(ValidationFailed) as info:
        load_config(p)
    lines = [str(x) for x in info.value.problems]
    assert len(lines) == 3, lines
    assert lines[0].startswith(f"{p}:3: audio.sorce: unknown key")
    assert lines[1].startswith(f"{p}:4: audio.channels:")
    assert lines[2].startswith(f"{p}:7: windows.hop: duration must not be negative")


def test_cross_field_errors_name_the_key(tmp_path):
    p = write(tmp_path, "windows:\n  length: 4s\n  hop: 5s\naudio:\n  buffer_seconds: 5\n")
    with pytest.raises(ValidationFailed) as info:
        load_config(p)
    text = str(info.value)
    assert f"{p}:3: windows.hop: must not exceed windows.length" in text
    assert f"{p}:5: audio.buffer_seconds: must hold at least" in text


def test_yaml_syntax_error_is_located(tmp_path):
    p = write(tmp_path, "node_id: a\naudio:\n  source: [mic\n")
    with pytest.raises(ValidationFailed) as info:
        load_config(p)
    (problem,) = info.value.problems
    assert problem.source == str(p) and problem.line is not None and "YAML syntax error" in problem.message


def test_missing_file_and_non_mapping(tmp_path):
    with pytest.raises(ValidationFailed, match="file not found"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ValidationFailed, match="must be a mapping"):
        load_config(write(tmp_path, "- a\n- b\n"))


def test_set_overrides_are_validated_the_same_way(tmp_path):
    p = write(tmp_path, "node_id: kitchen\n")
    config = load_config(p, ["windows.hop=1s", "mqtt.port=1884", "audio.device=3", "model.dtype=float32"])
    assert config.windows.hop == 1.0 and config.mqtt.port == 1884 and config.audio.device == 3
    with pytest.raises(ValidationFailed) as info:
        load_config(p, ["mqtt.port=abc", "windows.hopp=2s", "nonsense"])
    text = [str(x) for x in info.value.problems]
    assert any(t.startswith("--set: mqtt.port:") for t in text)
    assert any(t.startswith("--set: windows.hopp: unknown key") for t in text)
    assert any("expected key.path=value" in t for t in text)


def test_relative_paths_resolve_against_the_config_file(tmp_path, monkeypatch):
    sub = tmp_path / "etc"
    sub.mkdir()
    p = write(sub, "rules: my-rules\nstate_dir: ../var\naudio:\n  source: file:sounds/a.wav\n")
    some_rules(sub / "my-rules")
    some_rules(tmp_path / "cli-rules")
    config = load_config(p)
    assert config.rules == sub / "my-rules"
    assert config.state_dir == tmp_path / "var"
    assert config.audio.file_path == sub / "sounds/a.wav"
    monkeypatch.chdir(tmp_path)
    config = load_config(p, ["audio.source=file:here.wav", "rules=cli-rules"])
    assert config.audio.file_path == tmp_path / "here.wav"
    assert config.rules == tmp_path / "cli-rules"


def test_environment_expansion(tmp_path, monkeypatch):
    monkeypatch.setenv("AM_HOST", "broker.lan")
    monkeypatch.delenv("AM_UNSET", raising=False)
    p = write(tmp_path, "mqtt:\n  host: ${AM_HOST}\n  topic_prefix: ${AM_UNSET:-home}\n")
    config = load_config(p)
    assert config.mqtt.host == "broker.lan" and config.mqtt.topic_prefix == "home"
    bad = write(tmp_path, "mqtt:\n  host: ${AM_UNSET}\n", "bad.yaml")
    with pytest.raises(ValidationFailed, match=r"bad.yaml:2: mqtt.host: environment variable AM_UNSET is not set"):
        load_config(bad)


def test_source_must_be_mic_or_file(tmp_path):
    with pytest.raises(ValidationFailed, match=r":2: audio.source: must be `mic`, `file:PATH` or a stream URL"):
        load_config(write(tmp_path, "audio:\n  source: microphone\n"))


def test_node_id_must_be_a_safe_topic_segment(tmp_path):
    with pytest.raises(ValidationFailed, match="node_id"):
        load_config(write(tmp_path, "node_id: living/room#\n"))


def test_scores_topic_defaults_to_two_seconds_once_switched_on(tmp_path):
    """README: `mqtt.scores.enabled, interval`: `false`, `2s` — also when only `enabled` is written."""
    path = write(tmp_path, "mqtt:\n  scores: {enabled: true}\n  level: {interval: 5s}\n")
    mqtt = load_config(path).mqtt
    assert mqtt.scores.enabled and mqtt.scores.interval == 2.0
    assert mqtt.level.enabled and mqtt.level.interval == 5.0
    defaults = load_config(path, ["mqtt.scores.enabled=false"]).mqtt
    assert not defaults.scores.enabled and defaults.scores.interval == 2.0 and defaults.level.interval == 5.0
