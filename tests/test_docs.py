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
