"""Where a local model runs: a torch device and a dtype, resolved from `model.device` and `model.dtype`."""

from __future__ import annotations

from dataclasses import dataclass

from monitor.engine.errors import ModelLoadError
from monitor.engine.settings import ModelSettings


@dataclass(frozen=True)
class Placement:
    """Where the model runs: a torch device string and a dtype name."""

    device: str
    dtype: str


def resolve_placement(settings: ModelSettings) -> Placement:
    """`auto` -> CUDA with bfloat16 when available, else CPU with float32; explicit values win."""
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
        dtype = "bfloat16" if device.startswith("cuda") else "float32"
    return Placement(device, dtype)
