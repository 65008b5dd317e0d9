"""A minimal process that owns a Publisher, for tests that SIGKILL it or restart it.

    python tests/helpers/publisher_proc.py CONFIG.yaml [--rule RULE] [--emit N --id-prefix P]

Reads commands on stdin, one per line, and answers on stdout:
    event ID        publish an event with that id  -> "queued ID" once it is in the outbox
    state on|off    publish the rule's state       -> "state"
    depth           print the outbox depth         -> "depth N"
    stop [SECONDS]  Publisher.stop()               -> "stopped N" (events left), then exit
With --emit, N events with ids P-00000 ... are queued at start, each answered as above.
"ready" is printed once the publisher has started (not necessarily connected).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from monitor.config import load_config  # noqa: E402
from monitor.events import Event  # noqa: E402
from monitor.logsetup import setup_logging  # noqa: E402
from monitor.publish.publisher import Publisher  # noqa: E402


def make_event(rule: str, ident: str) -> Event:
    now = time.time()
    return Event(rule_id=rule, rule_name=rule.replace("_", " ").title(), kind="on", ts=now,
                 window_start=now - 8, window_end=now, score=0.9, lift=0.5, id=ident)


def say(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("config", type=Path)
    ap.add_argument("--rule", default="fall")
    ap.add_argument("--emit", type=int, default=0)
    ap.add_argument("--id-prefix", default="e")
    args = ap.parse_args()
    config = load_config(args.config)
    setup_logging(config.log.level)
    pub = Publisher(config.mqtt, config.node_id, config.display_name, config.state_dir)
    pub.start()
    say("ready")
    for i in range(args.emit):
        ident = f"{args.id_prefix}-{i:05d}"
        pub.publish_event(make_event(args.rule, ident))
        say(f"queued {ident}")
    for line in sys.stdin:
        cmd, _, rest = line.strip().partition(" ")
        if cmd == "event":
            pub.publish_event(make_event(args.rule, rest.strip()))
            say(f"queued {rest.strip()}")
        elif cmd == "state":
            pub.publish_state(args.rule, rest.strip() == "on")
            say("state")
        elif cmd == "depth":
            say(f"depth {pub.outbox_depth}")
        elif cmd == "stop":
            pub.stop(float(rest) if rest.strip() else 5.0)
            say(f"stopped {pub.outbox_depth}")
            return 0
    pub.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
