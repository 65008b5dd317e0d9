"""The `model:` config section.

`backend: local` runs the model in this process (transformers); `backend: openai` asks a model
served elsewhere through an OpenAI-compatible API (vLLM), so that a small board needs neither
torch nor a GPU. The API key is never in the config file: it is read from `api_key_file` or
from the environment variable named by `api_key_env` when the backend starts.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from monitor.configtypes import ConfigPath, Duration, Section

DEFAULT_MODEL_ID = "Qwen/Qwen2-Audio-7B-Instruct"


class ModelSettings(Section):
    """Which audio-language model answers the standing questions, and where it runs."""

    backend: Literal["local", "openai"] = "local"
    """How the model is run: `local` (transformers, in this process) or `openai` (a server such as vLLM)."""
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

    # -- backend: openai (a model served elsewhere; the keys above about loading and placing it are unused)
    url: str | None = Field(None, pattern=r"^https?://[^\s]+$")
    """Base URL of the OpenAI-compatible API, e.g. http://gpu-box:8000/v1 (backend: openai)."""
    name: str | None = Field(None, min_length=1)
    """The served model's name, as the server lists it on /v1/models (vLLM: --served-model-name)."""
    api_key_file: ConfigPath | None = None
    """File whose first line is the API key (vLLM: --api-key). Keep it mode 0600/0640."""
    api_key_env: str | None = Field(None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    """Name of an environment variable holding the API key."""
    ca_file: ConfigPath | None = None
    """PEM CA that signed an https server's certificate; none = the system's trusted CAs."""
    timeout: Duration = Field(10.0, gt=0, le=600)
    """The longest a batch of windows waits for the server; windows still unanswered then fail alone."""
    concurrency: int = Field(16, ge=1, le=256)
    """Requests in flight at once: every question of a batch of windows goes out together."""

    @model_validator(mode="after")
    def _served(self) -> ModelSettings:
        if self.backend == "openai":
            missing = [what for key, what in (("url", "model.url (the server's base URL, e.g. http://gpu-box:8000/v1)"),
                                              ("name", "model.name (the served model's name, as /v1/models lists it)"))
                       if getattr(self, key) is None]
            if missing:
                raise ValueError(f"backend: openai needs {' and '.join(missing)}")
        if self.api_key_file is not None and self.api_key_env is not None:
            raise ValueError("give either api_key_file or api_key_env, not both")
        return self
