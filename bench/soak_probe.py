"""Runs the daemon (`python -m monitor ...`) with a probe thread that records its C heap (soak.py --probe).

    python bench/soak_probe.py run -c CONFIG        # what `python -m monitor run -c CONFIG` does, probed

Every `SOAK_PROBE_EVERY` seconds (default 5) one JSON line goes to `SOAK_PROBE_OUT`: glibc's
`mallinfo2()` (bytes taken from the system by the arenas, in use, free inside them, mmapped
blocks) and, from `malloc_info()`, each heap's size and free bytes (arena 0 is the main heap; the
others are the per-thread arenas, 64 MiB each at most). With `SOAK_TRACEMALLOC=1` also the Python
objects' traced size, and every `SOAK_TRACEMALLOC_EVERY` seconds the 12 source lines whose
allocations grew most since the first snapshot. When the file named by `SOAK_PROBE_TRIM` appears,
the probe calls `malloc_trim(0)` once and records the resident size before and after (how much of
the growth is free memory the allocator kept), then removes the file.

A diagnosis tool: the thread reads, it changes nothing (but tracemalloc slows Python down).
"""

from __future__ import annotations

import ctypes
import json
import os
import re
import runpy
import sys
import threading
import time
import tracemalloc
from pathlib import Path

FIELDS = ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")


class Mallinfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in FIELDS]


def _rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


class Probe:
    def __init__(self, out: Path, every: float, trace_every: float | None, trim_file: Path | None):
        self.out, self.every, self.trace_every, self.trim_file = out, every, trace_every, trim_file
        self.libc = ctypes.CDLL("libc.so.6")
        self.libc.mallinfo2.restype = Mallinfo2
        self.libc.fopen.restype = ctypes.c_void_p
        self.libc.fopen.argtypes = (ctypes.c_char_p, ctypes.c_char_p)
        self.libc.fclose.argtypes = (ctypes.c_void_p,)
        self.libc.malloc_info.argtypes = (ctypes.c_int, ctypes.c_void_p)
        self.libc.malloc_trim.argtypes = (ctypes.c_size_t,)
        self.scratch = out.with_suffix(".malloc_info.xml")
        self.first: tracemalloc.Snapshot | None = None
        self.last_trace = time.monotonic()

    def heaps(self) -> list[dict[str, int]]:
        """Each arena's heap: bytes taken from the system and bytes free inside it (malloc_info)."""
        fp = self.libc.fopen(str(self.scratch).encode(), b"w")
        if not fp:
            return []
        self.libc.malloc_info(0, fp)
        self.libc.fclose(fp)
        xml = self.scratch.read_text()
        out = []
        for nr, body in re.findall(r'<heap nr="(\d+)">(.*?)</heap>', xml, re.S):
            size = re.search(r'<system type="current" size="(\d+)"/>', body)
            free = sum(int(s) for s in re.findall(r'<total type="(?:fast|rest)" count="\d+" size="(\d+)"/>', body))
            out.append({"nr": int(nr), "system": int(size.group(1)) if size else 0, "free": free})
        return out

    def sample(self) -> dict:
        info = self.libc.mallinfo2()
        row = {"t": time.time(), "rss_kib": _rss_kib(), **{f: int(getattr(info, f)) for f in FIELDS}}
        row["heaps"] = self.heaps()
        if tracemalloc.is_tracing():
            row["traced"] = tracemalloc.get_traced_memory()[0]
            if self.trace_every and time.monotonic() - self.last_trace >= self.trace_every:
                self.last_trace = time.monotonic()
                snap = tracemalloc.take_snapshot()
                if self.first is None:
                    self.first = snap
                else:
                    top = snap.compare_to(self.first, "lineno")[:12]
                    row["top_growth"] = [f"{s.size_diff / 1024:+.0f} KiB {s.count_diff:+d} "
                                         f"{s.traceback[0].filename}:{s.traceback[0].lineno}" for s in top]
        if self.trim_file is not None and self.trim_file.exists():
            before = _rss_kib()
            self.libc.malloc_trim(0)
            row["trim"] = {"rss_before_kib": before, "rss_after_kib": _rss_kib()}
            self.trim_file.unlink(missing_ok=True)
        return row

    def run(self) -> None:
        with self.out.open("a") as f:
            while True:
                try:
                    f.write(json.dumps(self.sample()) + "\n")
                    f.flush()
                except Exception as exc:  # noqa: BLE001 - the probe must never disturb the daemon
                    f.write(json.dumps({"t": time.time(), "error": repr(exc)}) + "\n")
                time.sleep(self.every)


def main() -> None:
    out = os.environ.get("SOAK_PROBE_OUT")
    if out:
        if os.environ.get("SOAK_TRACEMALLOC") == "1":
            tracemalloc.start(1)
        trace_every = float(os.environ.get("SOAK_TRACEMALLOC_EVERY", "300"))
        trim = os.environ.get("SOAK_PROBE_TRIM")
        probe = Probe(Path(out), float(os.environ.get("SOAK_PROBE_EVERY", "5")), trace_every,
                      Path(trim) if trim else None)
        threading.Thread(target=probe.run, name="soak-probe", daemon=True).start()
    sys.argv = ["monitor", *sys.argv[1:]]
    runpy.run_module("monitor", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
