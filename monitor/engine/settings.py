"""The `model:` config section."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from monitor.configtypes import ConfigPath, Section

DEFAULT_MODEL_ID = "Qwen/Qwen2-Audio-7B-Instruct"


class ModelSettings(Section):
    """Which audio-language model answers the standing questions, and where it runs."""

    backend: Literal["local"] = "local"
    """How the model is run: `local` (transformers, in this process)."""
    id: str = DEFAULT_MODEL_ID
    """Hugging Face hub id (used from the local cache; fetched once when online)."""
    path: ConfigPath | None = None
    """A local folder with the model and its processor; wins over `id`."""
    revision: str | None = None
    """Hub revision (branch, tag or commit) of `id`; null = the default branch."""
    device: str = Field("auto", pattern=r"^(auto|cpu|cuda(:\d+)?|mps)$")
    """auto (CUDA when available, else CPU), cpu, cuda, cuda:N."""
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """auto: bfloat16 on CUDA, float32 on CPU."""
    attn_implementation: Literal["sdpa", "eager"] = "sdpa"
    """Attention kernel. Both take the engine's shared-prefix mask; flash-attention kernels cannot."""
    system_prompt: str | None = None
    """System turn of every prompt; null = the chat template's own (Qwen: "You are a helpful assistant.")."""
    max_new_tokens: int = Field(96, ge=1, le=1024)
    """Upper bound on the length of any text answer, whatever a rule asks for (tokens)."""
    cpu_threads: int | None = Field(None, ge=1, le=512)
    """Threads torch may use on the CPU; null = torch's default (all cores)."""
    max_batch: int = Field(8, ge=1, le=256)
    """Most windows (of any rooms) answered together in one forward pass."""
