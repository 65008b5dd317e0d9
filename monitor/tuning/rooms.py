"""Which room of a config a replay or an evaluation hears as, and that room's config over a recording.

A user tunes with the config the daemon runs. With `sources:` (a whole home) each room has its
own audio settings and may have its own rules; a recording is replayed as one of them (`--room`,
default the first), and the config handed to the pipeline is narrowed to that room alone, its
audio read from the file as fast as the model answers: no other room's microphone or camera is
ever opened, and everything that takes a config's first room (the pipeline, the replay's page)
takes the chosen one.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from monitor.config import Config, Room


class RoomError(ValueError):
    """A `--room` the config does not have; str() is the one line the user sees."""


def pick_room(config: Config, room_id: str | None, source: str = "the config") -> Room:
    """The room `room_id` names (None: the first); raise RoomError naming the rooms there are."""
    rooms = config.rooms
    if room_id is None:
        return rooms[0]
    for room in rooms:
        if room.id == room_id:
            return room
    if not config.multi_room:
        raise RoomError(f"--room {room_id}: {source} has one room, {rooms[0].id} (its `audio:` section); "
                        "--room names a room of a config with `sources:`")
    raise RoomError(f"--room {room_id}: no such room in {source}; its rooms: {', '.join(r.id for r in rooms)}")


def one_room(config: Config, room: Room) -> Config:
    """`config` with `room` as its only room (its `rules` as given in `room`, e.g. a `--rules` override)."""
    if config.sources is None:
        return config.model_copy(update={"audio": room.audio, "rules": room.rules})
    source = config.sources[room.id].model_copy(update={"audio": room.audio, "rules": room.rules})
    return config.model_copy(update={"sources": {room.id: source}})


def with_recording(config: Config, path: Path) -> Config:
    """The config of its first room alone, that room's audio read from `path` as fast as the model answers."""
    room = config.rooms[0]
    audio = room.audio.model_copy(update={"source": f"file:{path}", "realtime": False})
    return one_room(config, dataclasses.replace(room, audio=audio))


def describe(config: Config, room: Room, chosen: bool) -> str | None:
    """The one line that says which room of a whole-home config applies (None for a single room)."""
    if not config.multi_room:
        return None
    how = "" if chosen else f", the first of {', '.join(r.id for r in config.rooms)} (--room ID picks another)"
    return f"as room {room.id} ({room.name}){how}: its rules ({room.rules}) and audio settings apply"
