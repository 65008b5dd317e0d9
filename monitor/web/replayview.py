"""`audio-monitor replay --serve`: the live page, drawn from a finished replay's files.

The replay's `scores.jsonl` becomes the score lines, its `events.jsonl` the events and ON spans;
an event's evidence is its clip when the folder has one, else the recording itself, played from
the event's window (a media fragment, `#t=start,end`), so nothing is cut or copied.
"""

from __future__ import annotations

import json
import logging
import signal
import threading
from pathlib import Path
from typing import Any

from monitor.config import Config
from monitor.rules import RuleSet
from monitor.web.hub import Hub, rule_info
from monitor.web.server import WebError, WebServer, read_web_password

log = logging.getLogger(__name__)


def _lines(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    with path.open(encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def load_replay(out_dir: Path, ruleset: RuleSet, config: Config, recording: Path,
                duration: float | None = None) -> Hub:
    """A hub holding the whole replay (no 10-minute limit: the recording is the span), finished:
    its page says so, with the recording's `duration` (seconds), and stops listening."""
    room = config.rooms[0]
    hub = Hub(history_s=None, mode="replay", recent_events=None)
    clips = out_dir / "clips"
    hub.add_room(room.id, room.name, clips if clips.is_dir() else None)
    scores = _lines(out_dir / "scores.jsonl")
    start = scores[0]["t_start"] if scores else 0.0
    hub.set_rules(room.id, rule_info(ruleset), {}, start)
    for record in scores:
        hub.add_point(room.id, {"t": record["t_end"], "dbfs": record["dbfs"],
                                "s": {k: [v["score"], v["lift"]] for k, v in record["rules"].items() if "score" in v}})
    for record in _lines(out_dir / "events.jsonl"):
        clip = None
        if record.get("clip") and (clips / Path(record["clip"]).name).is_file():
            clip = f"clips/{room.id}/{Path(record['clip']).name}"
        elif record["kind"] in ("on", "text", "match"):
            clip = f"recording#t={max(0.0, record['start']):.3f},{record['end']:.3f}"
        hub.add_record(room.id, {"id": record["id"], "rule": record["rule"], "name": record["name"],
                                 "kind": record["kind"], "t": record["ts"], "score": record.get("score"),
                                 "lift": record.get("lift"), "text": record.get("text"), "reason": record.get("reason"),
                                 "clip": clip})
    hub.set_status({"name": config.display_name, "node": config.node_id, "recording": recording.name,
                    "duration_s": None if duration is None else round(duration, 3),
                    "windows": len(scores), "rooms": {room.id: {"state": "replay", "capture": "file", "skipped": 0,
                                                                "processed": len(scores), "muted_own": False}}})
    hub.finish()
    return hub


def serve_replay(out_dir: Path, ruleset: RuleSet, config: Config, recording: Path,
                 duration: float | None = None) -> int:
    """Serve the replay's page until Ctrl-C or SIGTERM; the exit code. `duration`: the recording's, in seconds."""
    try:
        server = WebServer(load_replay(out_dir, ruleset, config, recording, duration), None, config.web,
                           read_web_password(config.web), recording=recording.resolve())
        url = server.start()
    except WebError as exc:
        log.error("%s", exc)
        return 1
    except OSError as exc:
        log.error("web: cannot listen on %s:%d (%s); set web.port", config.web.host, config.web.port, exc.strerror or exc)
        return 1
    log.info("web page on %s (Ctrl-C to stop)", url)
    stop = threading.Event()
    # Both signals handled here, not left to KeyboardInterrupt: a process started as a background
    # job inherits Ctrl-C ignored, and would then never stop on SIGINT.
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    while not stop.wait(1.0):
        pass
    server.stop()
    return 0
