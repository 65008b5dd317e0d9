"""One bench, several dtypes side by side: each dtype in a process of its own, compared with float32's.

`engine.py` and `rooms.py` take `--dtypes float32,bfloat16[,float64]`: the parent runs the bench
once per dtype as a child process (float32 first), so that each child's peak resident size
(`ru_maxrss`) is its dtype's alone, reads the child's JSON lines and prints them with what only
the comparison knows (`max_abs_diff_vs_fp32`, `engine_ms_vs_fp32`), then one summary line per dtype.

For the real-width `slice` (monitor/testing/tiny/qwen2_audio.py), each dtype runs at several
depths, and the full model's time per window is projected from them (`projection`).
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

DTYPES = ("float32", "bfloat16", "float16", "float64")
BF16_FLAGS = ("avx512_bf16", "amx_bf16")


BYTES = {"float64": 8, "float32": 4, "bfloat16": 2, "float16": 2}


def weights_mb(params: float, dtype: str) -> float:
    """MiB that `params` parameters take in `dtype`."""
    return params * BYTES[dtype] / 2**20


def parse_dtypes(text: str) -> list[str]:
    """`float32,bfloat16` -> the names, float32 first (the others are compared with it), each once."""
    names = list(dict.fromkeys(n.strip() for n in text.split(",") if n.strip()))
    unknown = [n for n in names if n not in DTYPES]
    if unknown or not names:
        raise ValueError(f"--dtypes takes a comma-separated list of {', '.join(DTYPES)} (got {text!r})")
    return sorted(names, key=lambda n: n != "float32")


def peak_rss_mb() -> float:
    """This process's peak resident size so far, MiB (Linux reports ru_maxrss in KiB)."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def load_average() -> float:
    return round(os.getloadavg()[0], 2)


def cpu() -> dict[str, Any]:
    """The CPU's name and which native bfloat16 instructions it has (from /proc/cpuinfo)."""
    name, flags = "", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and not name:
                name = value.strip()
            elif key.strip() in ("flags", "Features"):
                flags |= set(value.split())
    except OSError:
        pass
    return {"cpu": name, "cpus": os.cpu_count(), "bf16_flags": [f for f in BF16_FLAGS if f in flags]
            + (["bf16"] if "bf16" in flags else [])}


def run_child(script: Path, argv: Sequence[str], timeout: float | None = None) -> list[dict[str, Any]]:
    """Run `python script argv...`; its JSON lines, in order (other output goes to stderr)."""
    cmd = [sys.executable, str(script), *argv]
    print(f"# {' '.join(cmd[1:])}", file=sys.stderr, flush=True)
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, timeout=timeout)
    lines = []
    for raw in proc.stdout.splitlines():
        if raw.startswith("{"):
            lines.append(json.loads(raw))
        elif raw.strip():
            print(raw, file=sys.stderr)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[1:])} exited with {proc.returncode}")
    return lines


def max_abs_diff(a: Sequence[float] | None, b: Sequence[float] | None) -> float | None:
    if a is None or b is None or len(a) != len(b) or not a:
        return None
    return float(f"{max(abs(x - y) for x, y in zip(a, b, strict=True)):.3g}")


def fit_line(points: Mapping[int, float]) -> tuple[float, float]:
    """Least squares t(L) = a + b * L over (L, t) points (at least two depths)."""
    if len(points) < 2:
        raise ValueError("a line needs at least two depths")
    xs, ys = list(points), [points[x] for x in points]
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    if sxx == 0:
        raise ValueError("a line needs two different depths")
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx
    return my - b * mx, b


def projection(by_depth: Mapping[int, float], full_layers: int, fit_depths: Sequence[int] | None = None) -> dict[str, Any]:
    """The full depth's value from a line through some depths, checked against the depths left out.

    Each layer of the slice is one text layer and one audio encoder layer, as in the full model
    (32 of each): t(L) = a + b * L, where a is what does not repeat per layer (features, the
    embeddings, the 156032-token head over the answer rows, the prompt's assembly) and b one
    text layer plus one encoder layer. `fit_depths`: the depths the line goes through (default:
    the two shallowest); every other measured depth checks it: its value predicted by the line
    against the one measured.
    """
    depths = sorted(by_depth)
    fit = sorted(fit_depths) if fit_depths else depths[:2]
    a, b = fit_line({d: by_depth[d] for d in fit})
    checks = [{"depth": d, "predicted": round(a + b * d, 1), "measured": round(by_depth[d], 1),
               "error_pct": round((a + b * d - by_depth[d]) / by_depth[d] * 100, 1)} for d in depths if d not in fit]
    out = {"full": round(a + b * full_layers, 1), "fixed": round(a, 1), "per_layer": round(b, 2),
           "fit_depths": fit, "checks": checks}
    if b <= 0:  # a deeper slice was not slower: other work on the machine disturbed a depth; no projection
        out.update(full=None, failed="no cost per layer: the deeper depth measured no slower")
    return out
