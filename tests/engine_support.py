"""The engine tests' helper: fresh engines around the one tiny model a module loads (`engine` in conftest)."""

from __future__ import annotations

from monitor.engine.local.engine import Engine


def fresh(engine: Engine, cls: type[Engine] = Engine, **changes) -> Engine:
    """A new Engine (own baselines, counters and load-time checks) around the already loaded model."""
    settings = engine.settings.model_copy(update=changes)
    return cls(engine.model, engine.processor, settings, engine.placement)
