"""A soak of the whole daemon: three rooms, faults on a schedule, its memory watched for an hour.

    python bench/soak.py --minutes 60                       # tiny model, faults every 5 minutes
    python bench/soak.py --minutes 60 --model-size small    # the ~63M-parameter model
    python bench/soak.py --minutes 3 --fault-every 1        # smoke run
    python bench/soak.py --minutes 25 --env MALLOC_ARENA_MAX=2 --probe

Starts the real parts itself: mosquitto (persistent, so that a restart loses nothing queued for
the subscriber), a PulseAudio server with two virtual microphones (rooms `kitchen` and
`nursery`), a GStreamer RTSP camera (room `porch`), and the daemon (`python -m monitor run`) as a
subprocess with a `sources:` config, a loud yes/no rule and a text rule with a match on it, and
a tiny or small random-weight Qwen2-Audio built by `monitor.testing.tiny.qwen2_audio.build`. Each
microphone plays its own loop of espeak-ng speech (utterances of many lengths), noise bursts
and quiet; the camera sends another.

Faults, every `--fault-every` minutes from minute `--first-fault` on, spread over the period P:
the camera killed for 60 s (at most P/5), the broker stopped for 5 s (at 0.3 P), the kitchen
muted for 30 s (at most P/10; at 0.5 P) and unmuted, the rule file rewritten (the loud rule's
question and the transcript's length alternate between two versions) and SIGHUP sent (at 0.75 P).

Every `--sample-every` seconds: the daemon's resident size, threads and open files, and glibc's
per-thread heaps seen in /proc/PID/smaps (64 MiB-aligned anonymous mappings: how many, how much
of them is resident). `--probe` runs the daemon under bench/soak_probe.py, which adds
`mallinfo2()`/`malloc_info()` from inside the process (and Python's tracemalloc with
`--tracemalloc`). A subscriber checks that every event the daemon logged as published arrived,
once, in order.

Prints one JSON object on stdout: per-minute medians, the growth of the resident size from
minute `--from-minute` (default 20) to the last minute in %, the events and the lost/duplicated/
out-of-order counts, the faults with their times, the machine's load. The same goes to
OUT/result.json with OUT/samples.csv, OUT/events.csv, OUT/rss.png (if matplotlib is there) and
the daemon's log (OUT defaults to a new /tmp/soak-* folder). The parts, the audio and the config
are in bench/soak_home.py; bench/README.md has the measurements.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.soak_home import (  # noqa: E402
    CAM_PASSWORD, CAM_USER, CAMERA, MICS, REPO, RULE_VERSIONS, Broker, Player, Subscriber, missing_parts,
    last_probe, proc_sample, program, write_config, write_rules,
)
from tests.conftest import VirtualMic, free_port  # noqa: E402
from tests.helpers.mqtt_clients import send  # noqa: E402
from tests.helpers.rtsp_server import RtspServer  # noqa: E402

EVENT_LINE = re.compile(r" event (?:(?P<room>[a-z0-9_]+)/)?(?P<rule>\S+) (?P<kind>on|off|text|match) id=(?P<id>[0-9a-f]+)")

log_lock = threading.Lock()


def say(text: str) -> None:
    with log_lock:
        print(f"[soak {time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------- the soak


class Soak:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="soak-", dir="/tmp"))
        self.out.mkdir(parents=True, exist_ok=True)
        self.work = self.out / "work"
        self.work.mkdir(exist_ok=True)
        self.samples: list[dict] = []
        self.faults: list[dict] = []
        self.t0 = self.t0_wall = 0.0
        self.stop = threading.Event()
        self.rules_version = 0

    def minute(self) -> float:
        return (time.monotonic() - self.t0) / 60

    def fault(self, what: str) -> None:
        self.faults.append({"minute": round(self.minute(), 2), "what": what})
        say(f"minute {self.minute():.1f}: {what}")

    def run(self) -> dict:
        args = self.args
        say(f"output in {self.out}")
        from monitor.testing.tiny.qwen2_audio import build

        model = build(self.work / f"model-{args.model_size}", size=args.model_size)
        self.broker = Broker(self.work)
        self.broker.start()
        (self.work / "pulse").mkdir(exist_ok=True)
        self.mics = VirtualMic(self.work / "pulse", rooms=list(MICS.values()))
        loop_s = 90.0
        cam_s = (args.fault_every + 3) * 60 if args.fault_every else args.minutes * 60 + 300
        self.camera = RtspServer(program(self.work, CAMERA, 3, cam_s), free_port(), CAM_USER, CAM_PASSWORD,
                                 log=self.work / "rtsp.log").start()
        write_rules(self.work / "rules.yaml", 0)
        config = write_config(self.work, model, self.broker, self.camera, args)
        self.recorder = Subscriber("127.0.0.1", self.broker.port, ["am/#"], client_id="soak-subscriber", persistent=True)
        env = {**os.environ, **self.mics.env, "CAM_PASSWORD": CAM_PASSWORD, "PYTHONUNBUFFERED": "1",
               **dict(e.split("=", 1) for e in args.env)}
        command = [sys.executable, "-m", "monitor", "run", "-c", str(config)]
        if args.probe:
            command[1:3] = [str(REPO / "bench" / "soak_probe.py")]
            env["SOAK_PROBE_OUT"] = str(self.out / "probe.jsonl")
            env["SOAK_PROBE_TRIM"] = str(self.out / "trim")
            env["SOAK_PROBE_EVERY"] = str(args.sample_every)
            if args.tracemalloc:
                env["SOAK_TRACEMALLOC"] = "1"
        self.daemon_log = self.out / "daemon.log"
        with self.daemon_log.open("w") as logf:
            self.daemon = subprocess.Popen(command, cwd=REPO, env=env, stdout=logf, stderr=subprocess.STDOUT)
        players: list[Player] = []
        try:
            self._wait_log("listening:", 300)
            self.t0, self.t0_wall = time.monotonic(), time.time()
            self.load_start = os.getloadavg()
            say(f"daemon {self.daemon.pid} listening; soaking {args.minutes} min")
            players = [Player(self.mics, device, program(self.work, room, 1 + i, loop_s))
                       for i, (room, device) in enumerate(MICS.items())]
            threading.Thread(target=self._faults, name="faults", daemon=True).start()
            self._sample_until(self.t0 + args.minutes * 60)
            self.stop.set()
        finally:
            self.stop.set()
            for p in players:
                p.stop()
            result = self._finish()
        return result

    def _wait_log(self, text: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.daemon_log.read_text(errors="replace").splitlines():
                if text in line:
                    return line
            if self.daemon.poll() is not None:
                raise RuntimeError(f"the daemon exited ({self.daemon.returncode}); see {self.daemon_log}")
            time.sleep(0.5)
        raise TimeoutError(f"the daemon did not log {text!r} within {timeout}s; see {self.daemon_log}")

    def _sample_until(self, end: float) -> None:
        with (self.out / "samples.csv").open("w", newline="") as f:
            writer: csv.DictWriter | None = None
            while time.monotonic() < end:
                if self.daemon.poll() is not None:
                    raise RuntimeError(f"the daemon exited ({self.daemon.returncode}) at minute {self.minute():.1f}")
                row = {"minute": round(self.minute(), 3), **proc_sample(self.daemon.pid)}
                if self.args.probe:
                    row.update(last_probe(self.out / "probe.jsonl"))
                self.samples.append(row)
                if writer is None:
                    writer = csv.DictWriter(f, fieldnames=list(row), extrasaction="ignore")
                    writer.writeheader()
                writer.writerow(row)
                f.flush()
                if self.args.trim_at and abs(row["minute"] - self.args.trim_at) < self.args.sample_every / 60 \
                        and not (self.out / "trim.done").exists():
                    (self.out / "trim").touch()
                    (self.out / "trim.done").touch()
                    self.fault("malloc_trim(0) asked of the probe")
                time.sleep(max(0.0, min(self.args.sample_every, end - time.monotonic())))

    def _faults(self) -> None:
        """Every fault once per period, spread over it (see the module's docstring)."""
        period = self.args.fault_every * 60
        if not period:
            return
        cam_down = min(60.0, period / 5)
        muted_for = min(30.0, period / 10)
        schedule = [(0.0, self._camera_down), (cam_down, self._camera_up), (0.3 * period, self._broker_restart),
                    (0.5 * period, lambda: self._mute(True)), (0.5 * period + muted_for, lambda: self._mute(False)),
                    (0.75 * period, self._rewrite_rules)]
        start = self.t0 + self.args.first_fault * 60
        cycle = 0
        while not self.stop.is_set():
            for offset, action in schedule:
                when = start + cycle * period + offset
                if self.stop.wait(max(0.0, when - time.monotonic())):
                    return
                try:
                    action()
                except Exception as exc:  # noqa: BLE001 - a fault that cannot be applied is recorded, not fatal
                    self.fault(f"fault failed: {type(exc).__name__}: {exc}")
            cycle += 1

    def _camera_down(self) -> None:
        self.camera.kill()
        self.fault("camera killed")

    def _camera_up(self) -> None:
        self.camera.start()
        self.fault("camera back")

    def _broker_restart(self) -> None:
        self.broker.stop()
        self.fault("broker stopped")
        time.sleep(5)
        self.broker.start()
        self.fault("broker back")

    def _mute(self, on: bool) -> None:
        send("127.0.0.1", self.broker.port, "am/kitchen/set/mute", b"ON" if on else b"OFF")
        self.fault("kitchen muted" if on else "kitchen unmuted")

    def _rewrite_rules(self) -> None:
        self.rules_version += 1
        write_rules(self.work / "rules.yaml", self.rules_version)
        self.daemon.send_signal(signal.SIGHUP)
        self.fault(f"rules rewritten (version {self.rules_version % len(RULE_VERSIONS)}) and SIGHUP")

    # ------------------------------------------------------------------ the end

    def _logged_events(self) -> list[tuple[str, str]]:
        """(room, id) of every event the daemon logged as safe, in its order."""
        out = []
        for line in self.daemon_log.read_text(errors="replace").splitlines():
            m = EVENT_LINE.search(line)
            if m:
                out.append((m.group("room") or "home", m.group("id")))
        return out

    def _received(self) -> list[str]:
        with self.recorder._cond:
            return [ident for _, _, ident, _ in self.recorder.arrivals]

    def _finish(self) -> dict:
        metrics = {}
        if self.daemon.poll() is None:
            time.sleep(10)  # the last windows and their events
            deadline = time.monotonic() + 90
            while time.monotonic() < deadline and not {i for _, i in self._logged_events()} <= set(self._received()):
                time.sleep(1)
            metrics = self._metrics()
            self.daemon.send_signal(signal.SIGTERM)
            try:
                code = self.daemon.wait(60)
            except subprocess.TimeoutExpired:
                self.daemon.kill()
                code = self.daemon.wait()
        else:
            code = self.daemon.returncode
        time.sleep(2)
        logged = self._logged_events()
        self.recorder.close()
        self.camera.stop()
        self.broker.stop()
        self.mics.stop()
        with (self.out / "events.csv").open("w", newline="") as f:  # what arrived, for a look afterwards
            writer = csv.writer(f)
            writer.writerow(["time", "topic", "id", "dup_flag"])
            writer.writerows(self.recorder.arrivals)
        order = {i: n for n, (_, i) in enumerate(logged)}
        seen: set[str] = set()
        duplicated = out_of_order = unexpected = 0
        redelivered = []  # duplicates: minute of arrival, and whether the broker marked them as a redelivery
        latest = -1
        for when, _, ident, dup in self.recorder.arrivals:
            if ident in seen:
                duplicated += 1
                redelivered.append({"minute": round((when - self.t0_wall) / 60, 2), "dup_flag": dup})
                continue
            seen.add(ident)
            if ident not in order:
                unexpected += 1
                continue
            if order[ident] < latest:
                out_of_order += 1
            latest = max(latest, order[ident])
        result = {
            "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
            "model_size": self.args.model_size, "minutes": self.args.minutes, "fault_every": self.args.fault_every,
            "env": self.args.env, "exit_code": code,
            **self._memory(),
            "events": len(logged), "events_by_room": {r: sum(1 for x, _ in logged if x == r) for r in {x for x, _ in logged}},
            "received": len(seen), "lost": sum(1 for _, i in logged if i not in seen), "duplicated": duplicated,
            "out_of_order": out_of_order, "unexpected": unexpected, "duplicates": redelivered,
            "tracebacks": self.daemon_log.read_text(errors="replace").count("Traceback"),
            "windows": metrics, "faults": self.faults,
            "load_start": [round(x, 2) for x in getattr(self, "load_start", (0, 0, 0))],
            "load_end": [round(x, 2) for x in os.getloadavg()],
            "machine": f"{platform.platform()}, {os.cpu_count()} CPUs", "output": str(self.out),
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        }
        (self.out / "result.json").write_text(json.dumps(result, indent=1))
        self._plot()
        return result

    def _metrics(self) -> dict:
        """Windows processed and skipped per room, from the daemon's Prometheus endpoint."""
        try:
            port = re.search(r"metrics on http://127.0.0.1:(\d+)/metrics", self._wait_log("metrics on", 1)).group(1)
            text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        except Exception:  # noqa: BLE001 - optional
            return {}
        out: dict[str, dict[str, float]] = {}
        for name in ("windows_processed_total", "windows_skipped_total", "windows_failed_total"):
            for room, value in re.findall(rf'audio_monitor_{name}{{source="(\w+)"}} ([0-9.e+]+)', text):
                out.setdefault(room, {})[name.replace("_total", "")] = float(value)
        return out

    def _memory(self) -> dict:
        if not self.samples:
            return {}
        by_minute: dict[int, list[dict]] = {}
        for s in self.samples:
            by_minute.setdefault(int(s["minute"]), []).append(s)
        per_minute = []
        for m in sorted(by_minute):
            rows = by_minute[m]
            entry = {"minute": m}
            for key in rows[0]:
                if key != "minute":
                    entry[key] = round(statistics.median(r[key] for r in rows), 2)
            per_minute.append(entry)
        last = per_minute[-1]["minute"]
        base = min(self.args.from_minute, max(0, last // 2))
        at = next(e for e in per_minute if e["minute"] >= base)
        peak = max(e["rss_mib"] for e in per_minute if e["minute"] >= base)
        return {
            "rss_first_mib": per_minute[0]["rss_mib"], "rss_max_mib": max(e["rss_mib"] for e in per_minute),
            "from_minute": at["minute"], "rss_from_mib": at["rss_mib"], "rss_last_mib": per_minute[-1]["rss_mib"],
            "growth_from_pct": round((per_minute[-1]["rss_mib"] / at["rss_mib"] - 1) * 100, 2),
            "peak_growth_from_pct": round((peak / at["rss_mib"] - 1) * 100, 2),
            "threads": sorted({s["threads"] for s in self.samples}), "fds": sorted({s["fds"] for s in self.samples}),
            "cpu_s": round(self.samples[-1]["cpu_s"] - self.samples[0]["cpu_s"], 1),
            "per_minute": per_minute,
        }

    def _plot(self) -> None:
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            return
        fig, ax = plt.subplots(figsize=(10, 4))
        ax.plot([s["minute"] for s in self.samples], [s["rss_mib"] for s in self.samples], label="RSS")
        ax.plot([s["minute"] for s in self.samples], [s["heap_rss_mib"] for s in self.samples], label="arena heaps (RSS)")
        for f in self.faults:
            ax.axvline(f["minute"], color="grey", alpha=0.3, lw=0.8)
        ax.set_xlabel("minute")
        ax.set_ylabel("MiB")
        ax.legend()
        ax.set_title(" ".join(sys.argv[1:]) or "soak")
        fig.tight_layout()
        fig.savefig(self.out / "rss.png", dpi=90)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=60, help="soak length after the daemon listens (default 60)")
    parser.add_argument("--fault-every", type=float, default=5, help="minutes between fault cycles; 0: none (default 5)")
    parser.add_argument("--first-fault", type=float, default=2, help="minute of the first fault cycle (default 2)")
    parser.add_argument("--model-size", choices=("tiny", "small"), default="tiny")
    parser.add_argument("--window", type=float, default=2.0, help="window length, seconds (default 2)")
    parser.add_argument("--hop", type=float, default=1.0, help="window hop, seconds (default 1)")
    parser.add_argument("--sample-every", type=float, default=5.0, help="seconds between samples (default 5)")
    parser.add_argument("--from-minute", type=int, default=20, help="growth is measured from this minute (default 20)")
    parser.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                        help="extra environment of the daemon, e.g. MALLOC_ARENA_MAX=2 (repeatable)")
    parser.add_argument("--probe", action="store_true", help="record mallinfo2/malloc_info from inside the daemon")
    parser.add_argument("--tracemalloc", action="store_true", help="with --probe: trace Python allocations too (slow)")
    parser.add_argument("--trim-at", type=float, default=0, help="with --probe: call malloc_trim(0) at this minute")
    parser.add_argument("--out", help="output folder (default: a new /tmp/soak-*)")
    args = parser.parse_args(argv)
    if bad := [e for e in args.env if "=" not in e]:
        parser.error(f"--env takes KEY=VALUE, not {bad[0]!r}")
    if missing := missing_parts():
        print(f"soak: missing {', '.join(missing)}: install them (see the project's testing notes)", file=sys.stderr)
        return 2
    result = Soak(args).run()
    print(json.dumps(result))
    return 0 if result.get("exit_code") == 0 and not result["lost"] and not result["duplicated"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
