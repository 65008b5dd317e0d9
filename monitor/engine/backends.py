"""The registry of backends: `model.backend` names how the model runs, the engine thread never does.

Each entry loads a `Backend` from the `model:` settings, importing its heavy parts (torch,
transformers, an HTTP client) only then. A new way of running a model is one entry here; the
worker, the pipeline and the daemon do not change. A new model *family* is not a backend: it is
a file of `monitor.engine.families`, run by the local backend (`salmonn` is such a family, named
by `model.backend` because no checkpoint config names it).
"""

from __future__ import annotations

from collections.abc import Callable

from monitor.engine.api import Backend
from monitor.engine.settings import ModelSettings

Loader = Callable[[ModelSettings], Backend]


def _local(settings: ModelSettings) -> Backend:
    from monitor.engine.local.engine import Engine

    return Engine.load(settings)


def _openai(settings: ModelSettings) -> Backend:
    from monitor.engine.served import ServedModel  # httpx; never torch or transformers

    return ServedModel.load(settings)


def _salmonn(settings: ModelSettings) -> Backend:
    from monitor.engine.families import named
    from monitor.engine.local.engine import Engine

    return Engine.load(settings, family=named("salmonn"))


BACKENDS: dict[str, Loader] = {"local": _local, "openai": _openai, "salmonn": _salmonn}


def load_backend(settings: ModelSettings) -> Backend:
    """The backend `settings.backend` names, loaded; raises ModelLoadError (one line) when it cannot be."""
    return BACKENDS[settings.backend](settings)
