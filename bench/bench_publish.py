"""Publisher benchmark against a private mosquitto: prints one JSON object.

    python bench/bench_publish.py [--events 2000] [--no-fsync]

Measures what an alert costs on its way out:
- accept_ms: time for `publish_event` to return (the event is on disk in the outbox then);
- deliver_ms: publish_event -> a subscriber has the message (live broker, one event at a time);
- drain_events_per_s: a backlog built while the broker was away, sent after it returns.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from monitor.events import Event  # noqa: E402
from monitor.publish.publisher import Publisher  # noqa: E402
from monitor.publish.settings import MqttSettings  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Mosquitto:
    def __init__(self, workdir: Path):
        binary = shutil.which("mosquitto") or shutil.which("mosquitto", path="/usr/sbin:/usr/local/sbin")
        if binary is None:
            raise SystemExit("bench: the mosquitto broker is not installed (apt-get install mosquitto)")
        self.binary, self.port = binary, free_port()
        self.conf = workdir / "mosquitto.conf"
        self.conf.write_text(f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen([self.binary, "-c", str(self.conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise SystemExit("bench: mosquitto did not start")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(5)


class Counter:
    def __init__(self, port: int, topic: str):
        self.arrived: dict[str, float] = {}
        self.cond = threading.Condition()
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"bench-{time.monotonic_ns()}")
        ready = threading.Event()
        self.c.on_connect = lambda c, *_: c.subscribe(topic, 1)
        self.c.on_subscribe = lambda *_: ready.set()
        self.c.on_message = self._msg
        self.c.reconnect_delay_set(0.05, 0.2)
        self.c.connect("127.0.0.1", port)
        self.c.loop_start()
        ready.wait(10)

    def _msg(self, _c, _u, msg) -> None:
        with self.cond:
            self.arrived.setdefault(json.loads(msg.payload)["id"], time.perf_counter())
            self.cond.notify_all()

    def wait(self, n: int, timeout: float = 120) -> None:
        with self.cond:
            self.cond.wait_for(lambda: len(self.arrived) >= n, timeout)

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


def event(ident: str) -> Event:
    now = time.time()
    return Event(rule_id="fall", rule_name="Fall", kind="on", ts=now, window_start=now - 8, window_end=now, score=0.9, id=ident)


def pct(values: list[float], q: float) -> float:
    return round(statistics.quantiles(values, n=100)[int(q) - 1], 3) if len(values) > 2 else round(max(values), 3)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=2000)
    ap.add_argument("--no-fsync", action="store_true")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-publish-"))
    broker = Mosquitto(work)
    broker.start()
    # birth_timeout 0: measure delivery itself, not the wait for Home Assistant after connecting
    settings = MqttSettings(host="127.0.0.1", port=broker.port, reconnect_min=0.05, reconnect_max=0.2,
                            birth_timeout=0, outbox={"fsync": not args.no_fsync})
    topic = "audio-monitor/bench/fall/event"
    sub = Counter(broker.port, topic)
    pub = Publisher(settings, "bench", "Bench", work / "state")
    pub.start()
    while not pub._ready:
        time.sleep(0.01)

    live = min(200, args.events)
    accept, deliver = [], []
    for i in range(live):
        ident = f"live-{i}"
        t0 = time.perf_counter()
        pub.publish_event(event(ident))
        accept.append((time.perf_counter() - t0) * 1000)
        sub.wait(i + 1)
        deliver.append((sub.arrived[ident] - t0) * 1000)

    broker.stop()
    while pub.connected:
        time.sleep(0.01)
    for i in range(args.events):
        pub.publish_event(event(f"backlog-{i}"))
    t0 = time.perf_counter()
    broker.start()
    sub.wait(live + args.events)
    drain_s = time.perf_counter() - t0
    ok = len(sub.arrived) == live + args.events
    pub.stop()
    sub.close()
    broker.stop()
    shutil.rmtree(work, ignore_errors=True)
    print(json.dumps({
        "fsync": not args.no_fsync,
        "accept_ms": {"median": round(statistics.median(accept), 3), "p99": pct(accept, 99)},
        "deliver_ms": {"median": round(statistics.median(deliver), 3), "p99": pct(deliver, 99)},
        "backlog_events": args.events,
        "drain_s_including_reconnect": round(drain_s, 3),
        "drain_events_per_s": round(args.events / drain_s, 1),
        "all_delivered": ok,
    }))
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
