"""A small tmpfs that a test can fill to the last byte, free again, or make read-only.

The monitor's answer to a full or read-only state_dir is only believable against the real
errors (ENOSPC from the kernel, EROFS), which no mock of sqlite3 or open() reproduces: SQLite
reports them through its own paths (a WAL that cannot grow, a journal that cannot be created).
Mounting needs root.
"""

from __future__ import annotations

import errno
import os
import subprocess
from pathlib import Path

FILLER = ".filler"


class SmallDisk:
    """`mount -t tmpfs -o size=SIZE tmpfs PATH`; close() unmounts it (also when busy: lazily)."""

    def __init__(self, path: Path, size: str = "512k"):
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(self.path)],
                       check=True, capture_output=True, text=True)
        self.mounted = True

    def fill(self) -> int:
        """Write one file until the kernel says ENOSPC, in ever smaller pieces; the bytes written."""
        written = 0
        with open(self.path / FILLER, "ab", buffering=0) as f:
            for chunk in (65536, 4096, 512, 1):
                block = b"\0" * chunk
                while True:
                    try:
                        written += f.write(block) or 0
                    except OSError as exc:
                        if exc.errno != errno.ENOSPC:
                            raise
                        break
        return written

    def free(self) -> None:
        """Remove what fill() wrote."""
        (self.path / FILLER).unlink(missing_ok=True)

    def read_only(self) -> None:
        subprocess.run(["mount", "-o", "remount,ro", str(self.path)], check=True, capture_output=True, text=True)

    def close(self) -> None:
        if not self.mounted:
            return
        done = subprocess.run(["umount", str(self.path)], capture_output=True, text=True)
        if done.returncode != 0:  # a process of the test still holds a file there
            subprocess.run(["umount", "-l", str(self.path)], capture_output=True, text=True)
        self.mounted = False


def can_mount() -> bool:
    """Root, and allowed to mount (not the case in every container)."""
    return os.geteuid() == 0
