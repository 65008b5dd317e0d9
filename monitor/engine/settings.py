"""The `model:` config section.

`backend: local` runs the model in this process (transformers); `backend: openai` asks a model
served elsewhere through an OpenAI-compatible API (vLLM), so that a small board needs neither
torch nor a GPU; `backend: salmonn` runs SALMONN in this process, assembled from its released
checkpoint and the three public models it sits on (`model.salmonn`). The API key is never in the config file: it is read from `api_key_file` or
from the environment variable named by `api_key_env` when the backend starts.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, ValidationInfo, model_validator

from monitor.configtypes import ConfigPath, Duration, Section, resolve_path

DEFAULT_MODEL_ID = "Qwen/Qwen2-Audio-7B-Instruct"


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_HUB_FILE = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+:[^:]+$")


def _hub_or_path(value: Any, info: ValidationInfo) -> Any:
    """A hub reference (`owner/name`, or `owner/name:file`) stays a string unless such a path exists; else a path."""
    if isinstance(value, str) and (_HUB_ID.match(value) or _HUB_FILE.match(value)):
        path = resolve_path(value, info)
        return path if Path(path).exists() else value
    return resolve_path(value, info)


HubOrPath = Annotated[str | Path, BeforeValidator(_hub_or_path)]
"""A Hugging Face hub reference or a local path (relative ones resolve like every config path)."""


class SalmonnSettings(Section):
    """Where the parts of a SALMONN model come from (backend: salmonn)."""

    checkpoint: HubOrPath | None = None
    """SALMONN's released .pth: a path, or `hub-id:file`, e.g. tsinghua-ee/SALMONN-7B:salmonn_7b_v0.pth."""
    whisper: HubOrPath = "openai/whisper-large-v2"
    """The Whisper model whose encoder hears speech: hub id or folder."""
    beats: ConfigPath | None = None
    """BEATs checkpoint (.pt, {"cfg", "model"}): BEATs_iter3_plus_AS2M_finetuned_on_AS2M_cpt2.pt."""
    llm: HubOrPath = "lmsys/vicuna-7b-v1.5"
    """The Vicuna the checkpoint's LoRA was trained on: hub id or folder (13B v1: Vicuna-13B v1.1)."""
    lora_alpha: float = Field(32.0, gt=0, le=1024)
    """LoRA scale numerator (scale = alpha / r, r = 8); the 7B demo used 28."""


class ModelSettings(Section):
    """Which audio-language model answers the standing questions, and where it runs."""

    backend: Literal["local", "openai", "salmonn"] = "local"
    """How the model is run: `local` (transformers, in this process), `openai` (a server such as vLLM) or `salmonn`."""
    id: str = DEFAULT_MODEL_ID
    """Hugging Face hub id (used from the local cache; fetched once when online)."""
    path: ConfigPath | None = None
    """A local folder with the model and its processor; wins over `id`."""
    revision: str | None = None
    """Hub revision (branch, tag or commit) of `id`; null = the default branch."""
    device: str = Field("auto", pattern=r"^(auto|cpu|cuda(:\d+)?|mps)$")
    """auto (CUDA when available, else CPU), cpu, cuda, cuda:N."""
    dtype: Literal["auto", "float32", "bfloat16", "float16", "float64"] = "auto"
    """auto: bfloat16 on CUDA and on a CPU with native bfloat16 (avx512_bf16, amx_bf16, Arm bf16), else float32.
    float64 is for checks (docs/engine.md, "Precision"), not for serving."""
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
    failure_timeout: Duration = Field(30.0, ge=1, le=3600)
    """Windows failing this long with no answer between them put a room in `model_failed` (its ON rules turn OFF)."""

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

    # -- backend: salmonn (device, dtype, cpu_threads, max_batch, max_new_tokens above apply)
    salmonn: SalmonnSettings = SalmonnSettings()
    """The parts of a SALMONN model (backend: salmonn)."""

    @property
    def label(self) -> str:
        """The model as logs and reports name it (the daemon adds a served model's address)."""
        if self.backend == "salmonn":
            return f"SALMONN ({self.salmonn.checkpoint})"
        return str(self.path or self.id)

    @model_validator(mode="after")
    def _served(self) -> ModelSettings:
        if self.backend == "openai":
            missing = [what for key, what in (("url", "model.url (the server's base URL, e.g. http://gpu-box:8000/v1)"),
                                              ("name", "model.name (the served model's name, as /v1/models lists it)"))
                       if getattr(self, key) is None]
            if missing:
                raise ValueError(f"backend: openai needs {' and '.join(missing)}")
        if self.backend == "salmonn":
            missing = [what for key, what in (
                ("checkpoint", "model.salmonn.checkpoint (the released .pth, e.g. "
                               "tsinghua-ee/SALMONN-7B:salmonn_7b_v0.pth)"),
                ("beats", "model.salmonn.beats (the BEATs .pt, BEATs_iter3_plus_AS2M_finetuned_on_AS2M_cpt2.pt)"))
                if getattr(self.salmonn, key) is None]
            if missing:
                raise ValueError(f"backend: salmonn needs {' and '.join(missing)}")
        if self.api_key_file is not None and self.api_key_env is not None:
            raise ValueError("give either api_key_file or api_key_env, not both")
        return self
