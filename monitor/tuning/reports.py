"""Where a tuning report goes: its JSON and its plot, side by side in one folder."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any


def write_report(report: dict[str, Any], out_dir: Path, name: str,
                 plot: Callable[[dict[str, Any], Path], Any]) -> dict[str, Path]:
    """report.json and NAME.png (drawn by `plot`) into `out_dir`, made if missing."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "report.json"
    path.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    png = out_dir / f"{name}.png"
    plot(report, png)
    return {"report": path, "plot": png}


def text_table(rows: list[list[str]]) -> list[str]:
    """Rows of cells (the first is the heading) as aligned lines, a rule of dashes under the heading."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return lines
