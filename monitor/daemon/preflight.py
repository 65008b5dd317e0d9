"""What must hold before the daemon runs: the rules, state_dir, the input devices, the page's and the broker's secrets.

Each check fails with a `StartupError` whose message is the one line the user sees (naming the
setting and what to do), never a traceback. Problems that one room can live with (a microphone
unplugged in a whole home, a full disk) are logged and the daemon starts anyway.
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from monitor.audio.portaudio import PORTAUDIO, DeviceNotFound
from monitor.audio.sources import SourceError, resolve_device
from monitor.config import Config, Room
from monitor.rules import RuleSet, load_rules
from monitor.yamlsource import ValidationFailed

if TYPE_CHECKING:
    from concurrent.futures import Future

    from monitor.labels.requests import LabelRequest, Outcome
    from monitor.publish.publisher import Publisher
    from monitor.web.live import LivePage

log = logging.getLogger(__name__)

Command = Callable[[str, str, str], None]


class StartupError(RuntimeError):
    """A failure before the daemon is running; its message is the one line the user sees."""


def source_error(room: Room, exc: SourceError) -> StartupError:
    """A room's source problem, named by where the room is in the config."""
    where = ".".join(room.loc)
    return StartupError(f"{where}.{exc}" if where else str(exc))


def load_rulesets(config: Config) -> dict[Path, RuleSet]:
    """Every distinct rules path of the rooms, validated; one line per problem, then StartupError."""
    rulesets: dict[Path, RuleSet] = {}
    problems = []
    for room in config.rooms:
        if room.rules in rulesets:
            continue
        try:
            rulesets[room.rules] = load_rules(room.rules)
        except ValidationFailed as exc:
            problems.extend(exc.problems)
    if problems:
        for problem in problems[1:]:
            log.error("%s", problem)
        more = f" (and {len(problems) - 1} more problem(s) above)" if len(problems) > 1 else ""
        raise StartupError(str(problems[0]) + more)
    return rulesets


def check_state_dir(state_dir: Path) -> None:
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StartupError(f"state_dir: cannot write to {state_dir} ({exc.strerror}); create it or point state_dir elsewhere") from None
    probe = state_dir / ".writable"
    try:
        probe.write_text("probe\n")  # some bytes: a full file system may still create an empty file
    except OSError as exc:
        # A full or read-only disk must not silence the alarms (events are then published
        # without the outbox); a folder the service may not write to is a setup error.
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO):
            raise StartupError(f"state_dir: cannot write to {state_dir} ({exc.strerror}); create it or point state_dir elsewhere") from None
        log.warning("state_dir %s: cannot write (%s); starting anyway: events are published without the outbox "
                    "until it can store them, clips and the mute state are not kept", state_dir, exc.strerror)
    finally:
        try:
            probe.unlink(missing_ok=True)
        except OSError:
            pass


def check_devices(config: Config, first_given: bool) -> dict[str, str]:
    """Every named input device must exist at start: {room id: hearing detail} of those that do not.

    One microphone is a config error (one line). In a whole home one unplugged microphone is
    that room's problem: it starts deaf (`capture_lost`) and its device is looked for with
    backoff while the other rooms listen; only a home where no room could hear does not start.
    `first_given`: the first room's source was handed in (tests): nothing to look for.
    """
    missing: dict[str, tuple[str, str]] = {}
    for i, room in enumerate(config.rooms):
        audio = room.audio
        if (i == 0 and first_given) or audio.source != "mic" or audio.device is None:
            continue
        try:
            with PORTAUDIO.session() as sd:
                resolve_device(audio.device, sd)
        except OSError as exc:
            raise StartupError(f"audio: cannot load PortAudio ({exc}); install libportaudio2") from None
        except SourceError as exc:
            text = str(source_error(room, exc))
            if not config.multi_room:
                raise StartupError(text) from None
            detail = exc.short if isinstance(exc, DeviceNotFound) else str(exc)
            missing[room.id] = (text, detail)
    if missing and len(missing) == len(config.rooms):
        texts = [text for text, _ in missing.values()]
        for text in texts[1:]:
            log.error("%s", text)
        more = f" (and {len(texts) - 1} more above)" if len(texts) > 1 else ""
        raise StartupError(f"{texts[0]}{more}: no room can hear; plug the microphones in or fix the names")
    for text, _ in missing.values():
        log.error("%s; starting without it: the room cannot hear (capture_lost) until the device appears "
                  "(looked for with backoff)", text)
    return {room_id: detail for room_id, (_, detail) in missing.items()}


def open_page(config: Config, on_command: Command, wake: Callable[[], None],
              on_label: Callable[[LabelRequest], Future[Outcome]] | None = None) -> LivePage | None:
    """The live page when `web.enabled` (not serving yet); StartupError when its password cannot be read."""
    if not config.web.enabled:
        return None
    from monitor.web.live import LivePage
    from monitor.web.server import WebError

    try:
        return LivePage(config.web, on_command, wake, on_label)
    except WebError as exc:
        raise StartupError(str(exc)) from None


def open_publisher(config: Config, state_dir: Path, on_command: Command,
                   rooms: list[tuple[str, str]] | None) -> Publisher:
    """The publisher (not connecting yet); StartupError for what the `mqtt:` settings name wrongly
    (a password file or variable, a TLS file): a broker that cannot be reached is retried."""
    from monitor.publish import Publisher, PublisherError

    try:
        return Publisher(config.mqtt, config.node_id, config.display_name, state_dir, on_command=on_command,
                         rooms=rooms)
    except PublisherError as exc:
        raise StartupError(str(exc)) from None
