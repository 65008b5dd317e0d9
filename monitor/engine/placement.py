"""Where a local model runs: a torch device and a dtype, resolved from `model.device` and `model.dtype`.

`model.dtype: auto` is bfloat16 on CUDA, and on a CPU that multiplies bfloat16 natively (its
flags say so: x86 `avx512_bf16` or `amx_bf16`, Arm `bf16`); float32 on any other CPU, where
bfloat16 would be emulated and slower than float32. torch reports only the vector width it
compiled for (`torch.backends.cpu.get_cpu_capability()`, e.g. "AVX512"), not bfloat16 support,
so the flags are read from /proc/cpuinfo. The environment variable MONITOR_CPU_BF16 (1 or 0)
overrides what the flags say; the test suite sets it to keep its float32 comparisons.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from monitor.engine.errors import ModelLoadError
from monitor.engine.settings import ModelSettings

log = logging.getLogger(__name__)

CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16", "bf16")  # x86 (AVX-512 BF16, AMX), aarch64 (FEAT_BF16)
CPU_BF16_ENV = "MONITOR_CPU_BF16"


@dataclass(frozen=True)
class Placement:
    """Where the model runs: a torch device string and a dtype name."""

    device: str
    dtype: str


def cpu_bf16(cpuinfo: str | Path = "/proc/cpuinfo") -> tuple[bool, str]:
    """(whether this CPU multiplies bfloat16 natively, why: the flag found, or what is missing)."""
    forced = os.environ.get(CPU_BF16_ENV, "").strip()
    if forced in ("0", "1"):
        return forced == "1", f"{CPU_BF16_ENV}={forced}"
    try:
        text = Path(cpuinfo).read_text(errors="replace")
    except OSError:
        return False, f"{cpuinfo} is unreadable, so the CPU's bfloat16 support is unknown"
    flags: set[str] = set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() in ("flags", "features"):  # x86 "flags", aarch64 "Features"
            flags.update(value.split())
    found = next((f for f in CPU_BF16_FLAGS if f in flags), None)
    if found is not None:
        return True, f"the CPU has {found}"
    return False, "the CPU has no native bfloat16 (none of " + ", ".join(CPU_BF16_FLAGS) + ")"


def resolve_placement(settings: ModelSettings) -> Placement:
    """`auto` -> CUDA with bfloat16 when available, else CPU with bfloat16 or float32 (`cpu_bf16`); explicit values win."""
    import torch

    device = settings.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    elif device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ModelLoadError(
                f"model.device is {device} but torch sees no CUDA device (torch {torch.__version__}): "
                "install the CUDA build of torch and the NVIDIA driver, or set model.device: cpu")
        index = int(device.split(":")[1]) if ":" in device else 0
        if index >= torch.cuda.device_count():
            raise ModelLoadError(
                f"model.device is {device} but only {torch.cuda.device_count()} CUDA device(s) exist: "
                "choose another index or model.device: auto")
    elif device == "mps" and not torch.backends.mps.is_available():
        raise ModelLoadError("model.device is mps but this torch has no MPS support: set model.device: cpu")
    dtype = settings.dtype
    if dtype == "auto":
        if device.startswith("cuda"):
            dtype = "bfloat16"
        elif device == "cpu":
            native, why = cpu_bf16()
            dtype = "bfloat16" if native else "float32"
            log.info("model.dtype auto on the CPU: %s, because %s%s", dtype, why,
                     "" if native else " (bfloat16 would be emulated, slower than float32)")
        else:
            dtype = "float32"
    return Placement(device, dtype)
