"""The `describe:` and `incidents:` config sections: what was heard in words, one incident per sound.

Kept apart from the daemon's parts so that `audio-monitor check` validates them without importing them.
"""

from __future__ import annotations

from pydantic import Field

from monitor.configtypes import Duration, Section


class DescribeSettings(Section):
    """Descriptions of what a rule heard (`describe: true` rules), answered when the model has time."""

    max_lag: Duration = Field(5.0, gt=0, le=600)
    """A description still waiting this long after its rule turned ON (the engine busy with the live
    windows of the rooms all that time) is dropped: counted, logged once."""
    max_new_tokens: int = Field(48, ge=1, le=512)
    """Longest description, in tokens (about 0.75 words each): its time on the engine grows with it."""


class IncidentSettings(Section):
    """One incident per sound: the same rule turning ON in several rooms at once."""

    window: Duration = Field(5.0, ge=0, le=600)
    """ON events of one rule in several rooms this close together (from the first) form one incident."""
