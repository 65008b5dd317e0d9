"""The `model:` config section."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from monitor.configtypes import ConfigPath, Section

DEFAULT_MODEL_ID = "Qwen/Qwen2-Audio-7B-Instruct"


class ModelSettings(Section):
    """Which audio-language model answers the standing questions, and where it runs."""

    id: str = DEFAULT_MODEL_ID
    """Hugging Face hub id (used from the local cache; fetched once when online)."""
    path: ConfigPath | None = None
    """A local folder with the model and its processor; wins over `id`."""
    device: str = Field("auto", pattern=r"^(auto|cpu|cuda(:\d+)?|mps)$")
    """auto (CUDA when available, else CPU), cpu, cuda, cuda:N."""
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """auto: bfloat16 on CUDA, float32 on CPU."""
