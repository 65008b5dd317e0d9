"""The `labels:` config section: how much of the labelled set is kept.

Kept apart from the store so that the config composes it without importing numpy or soundfile.
"""

from __future__ import annotations

from pydantic import Field

from monitor.configtypes import Section


class LabelSettings(Section):
    """Labelled clips (alerts marked right or wrong, sounds it missed), kept under state_dir/labels for tuning."""

    max_mb: float = Field(200.0, gt=0)
    """When all labelled clips together pass this size, the oldest are deleted first."""
