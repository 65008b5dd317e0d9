"""The documentation tells the truth: what users read is checked against what the code does."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from monitor.audio.formats import AUDIO_FORMATS, AUDIO_SUFFIXES

REPO = Path(__file__).resolve().parent.parent


def _help(*args: str) -> str:
    out = subprocess.run([sys.executable, "-m", "monitor", *args, "--help"], cwd=REPO, capture_output=True,
                         text=True, timeout=60, env={"COLUMNS": "200", "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    return " ".join(out.stdout.split())


def test_replay_eval_and_docs_name_the_same_recording_formats() -> None:
    replay, evaluate = _help("replay"), _help("eval")
    assert AUDIO_FORMATS in replay and AUDIO_FORMATS in evaluate
    tuning = " ".join((REPO / "docs" / "tuning.md").read_text().split())
    streams = " ".join((REPO / "docs" / "streams.md").read_text().split())
    assert AUDIO_FORMATS in tuning
    for suffix in AUDIO_SUFFIXES:  # what eval's label folders pick up, as both pages list it
        assert f"`{suffix}`" in tuning and f"`{suffix}`" in streams, suffix
    assert "still list only" not in streams
    for fmt in ("M4A", "3GP", "CAF", "MP3"):  # what FileSource reads through FFmpeg (tests/test_sources.py)
        assert fmt in AUDIO_FORMATS


def _table_problems(path: Path) -> list[str]:
    """Blocks of `|` lines that do not render as a table: no header and `|---|` row, or no blank line before."""
    lines = path.read_text().splitlines()
    problems = []
    fenced = False
    start = None
    for number, line in enumerate(lines + [""], 1):
        if line.startswith("```"):
            fenced = not fenced
        is_row = not fenced and line.startswith("|")
        if is_row and start is None:
            start = number
        elif not is_row and start is not None:
            block = lines[start - 1:number - 1]
            before = lines[start - 2] if start > 1 else ""
            if len(block) < 2 or not re.match(r"^\|\s*:?-{3,}", block[1]) or before.strip():
                problems.append(f"{path.name}:{start}: a table that renders as plain text")
            start = None
    return problems


def test_markdown_tables_render_as_tables() -> None:
    """A paragraph inside a Markdown table ends it: the rows after it render as plain text."""
    pages = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")), REPO / "bench" / "README.md"]
    problems = [p for page in pages for p in _table_problems(page)]
    assert not problems, "\n".join(problems)


def _readme_config_rows() -> list[tuple[int, list[str], str]]:
    """(line, keys, default cell) of every row of README's `| key | default | meaning |` tables."""
    rows = []
    header = False
    for number, line in enumerate((REPO / "README.md").read_text().splitlines(), 1):
        if line.startswith("| key | default |"):
            header = True
            continue
        if not line.startswith("|"):
            header = False
            continue
        if header and not line.startswith("|---"):
            cells = [c.strip() for c in line.strip("|").split(" | ")]
            keys = re.findall(r"`([a-z_]+(?:\.[a-z_<>]+)+|[a-z_]+)`", cells[0])
            rows.append((number, keys, cells[1]))
    return rows


def _default_of(model: type, path: str) -> tuple[bool, object]:
    """(found, default) of a dotted config key, walking the pydantic sections."""
    value: object = None
    for part in path.split("."):
        fields = getattr(model, "model_fields", None)
        if fields is None or part not in fields:
            return False, None
        field = fields[part]
        value = field.get_default(call_default_factory=True)
        model = type(value) if hasattr(type(value), "model_fields") else field.annotation
    return True, value


def _literal(cell: str) -> tuple[bool, object]:
    """The value a README default cell states, when it is one plain literal."""
    from monitor.configtypes import parse_duration

    if cell == "none":
        return True, None
    m = re.fullmatch(r"`([^`]*)`", cell)
    if not m:
        return False, None
    text = m.group(1)
    if "{" in text:  # computed from another key, e.g. `audio-monitor-{node_id}`
        return False, None
    if text in ("true", "false"):
        return True, text == "true"
    if re.fullmatch(r"-?\d+", text):
        return True, int(text)
    if re.fullmatch(r"[\d.]+(ms|s|m|h|d)", text):
        return True, parse_duration(text)
    return True, text


def test_readme_config_tables_match_the_code() -> None:
    """Every key in README's config tables exists, and a plainly stated default is the code's."""
    from monitor.config import Config

    checked, problems = 0, []
    for line, keys, default in _readme_config_rows():
        keys = [k for k in keys if k.split(".")[0] in Config.model_fields and "<" not in k]
        defaults = [d.strip() for d in default.split(",")] if len(keys) > 1 else [default]
        for i, key in enumerate(keys):
            found, actual = _default_of(Config, key)
            if not found:
                problems.append(f"README.md:{line}: `{key}` is not a config key")
                continue
            plain, stated = _literal(defaults[i] if i < len(defaults) else "")
            if not plain:
                continue
            checked += 1
            actual = str(actual) if isinstance(actual, Path) else actual
            if stated is None and actual in ((), [], {}):  # "none": no entries
                continue
            if stated != actual:
                problems.append(f"README.md:{line}: `{key}` defaults to {actual!r}, README says {stated!r}")
    assert not problems, "\n".join(problems)
    assert checked > 40, checked  # the tables were found and read
