"""What every backend says when something fails: one line a person can act on.

A daemon that cannot load its model must stop with a message that names the setting and what to
do, not with a traceback; a window that fails is one line in its Result. Nothing here imports
torch (the `openai` backend shares it).
"""

from __future__ import annotations

from monitor.errors import first_line

__all__ = ["ModelLoadError", "first_line", "is_out_of_memory"]


class ModelLoadError(RuntimeError):
    """The model could not be loaded; str() is one line saying what to do about it."""


def is_out_of_memory(exc: BaseException) -> bool:
    """CUDA OOM, or the CPU allocator giving up (while loading or while answering a window)."""
    import torch

    if isinstance(exc, (MemoryError, torch.cuda.OutOfMemoryError)):
        return True
    text = str(exc).lower()
    return "out of memory" in text or (isinstance(exc, RuntimeError) and "can't allocate memory" in text)
