"""Standing questions asked of a model served by vLLM: concurrent against one after another, and the prefix cache.

    python bench/served.py                         # starts vLLM (.venv-vllm) on a `small` random-weight model
    python bench/served.py --size served           # the tiny test model instead (HTTP overhead dominates)
    python bench/served.py --url http://gpu-box:8000/v1 --name qwen2-audio [--api-key-env VLLM_API_KEY]

For each mode, a few fresh 10 s windows (audio the server has not heard, so that every cache hit
comes from the questions of one window sharing its audio), 8 yes/no questions each, through the
`openai` backend exactly as the daemon asks them:

- sequential: `model.concurrency: 1`, the questions one after another;
- concurrent: all 8 in flight together (`model.concurrency: 16`, the default).

Prints one JSON line per mode: median ms per window, and the share of prompt tokens the server
took from its prefix cache (`vllm:prefix_cache_hits_total` / `vllm:prefix_cache_queries_total`
from its /metrics, before and after) and of audio items from its multimodal cache; then a line
with the speedup and the machine.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import re
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from monitor.engine.api import Question, Request  # noqa: E402
from monitor.engine.settings import ModelSettings  # noqa: E402
from monitor.testing.signals import make_window, noise, tone  # noqa: E402

from engine import QUESTIONS as ENGINE_QUESTIONS  # noqa: E402  (bench/engine.py, beside this file)

REPO = Path(__file__).resolve().parent.parent
VLLM_PYTHON = REPO / ".venv-vllm" / "bin" / "python"
NAME = "bench-audio"
QUESTIONS = ENGINE_QUESTIONS[:8]  # phrased like the shipped rules (rules/home.yaml), as bench/engine.py asks them

log = logging.getLogger("bench.served")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_vllm(model_dir: Path, port: int, api_key: str, log_path: Path) -> subprocess.Popen:
    """vLLM on the CPU as docs/served.md starts it, in its own process group."""
    if not VLLM_PYTHON.exists():
        sys.exit(f"{VLLM_PYTHON} is missing: `make test` creates .venv-vllm (or pass --url of a running server)")
    cmd = [str(VLLM_PYTHON), "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir),
           "--served-model-name", NAME, "--host", "127.0.0.1", "--port", str(port), "--dtype", "float32",
           "--max-model-len", "2048", "--enforce-eager", "--kv-cache-memory-bytes", "512M",
           "--chat-template-content-format", "string", "--logprobs-mode", "processed_logprobs", "--api-key", api_key]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1"}
    with open(log_path, "ab") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    deadline = time.monotonic() + 400
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"vLLM exited ({proc.returncode}); see {log_path}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                if r.status == 200:
                    return proc
        except OSError:
            time.sleep(0.5)
    stop_vllm(proc)
    sys.exit(f"vLLM not ready after 400 s; see {log_path}")


def stop_vllm(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def counters(root: str) -> dict[str, float]:
    """vLLM's cache counters (summed over engines) from its Prometheus /metrics."""
    text = urllib.request.urlopen(f"{root}/metrics", timeout=10).read().decode()
    out: dict[str, float] = {}
    for name in ("prefix_cache_queries", "prefix_cache_hits", "mm_cache_queries", "mm_cache_hits", "prompt_tokens"):
        values = re.findall(rf"^vllm:{name}_total(?:{{[^}}]*}})? (\S+)$", text, re.M)
        out[name] = sum(float(v) for v in values)
    return out


def share(before: dict[str, float], after: dict[str, float], hits: str, queries: str) -> float | None:
    asked = after[queries] - before[queries]
    return round(100.0 * (after[hits] - before[hits]) / asked, 1) if asked else None


def windows(count: int, seconds: float, seed: int) -> list:
    """Fresh windows: a tone in noise, different for every seed (nothing the server has cached)."""
    out = []
    for i in range(count):
        audio = tone(seconds, 220.0 + 37.0 * (seed + i), 0.2) + noise(seconds, 0.05, seed=seed * 100 + i)
        out.append(make_window(audio, seq=i, start=i * len(audio)))
    return out


def run_mode(backend, wins: list, root: str) -> dict:
    before = counters(root)
    times = []
    for window in wins:
        request = Request(window, tuple(Question(f"q{i}", q) for i, q in enumerate(QUESTIONS)))
        started = time.perf_counter()
        (result,) = backend.answer([request])
        times.append((time.perf_counter() - started) * 1000)
        if result.error is not None:
            sys.exit(f"window failed: {result.error}")
    after = counters(root)
    return {"ms_per_window": round(statistics.median(times), 1), "ms_min": round(min(times), 1),
            "prefix_cache_hit_pct": share(before, after, "prefix_cache_hits", "prefix_cache_queries"),
            "mm_cache_hit_pct": share(before, after, "mm_cache_hits", "mm_cache_queries"),
            "prompt_tokens_per_question": round((after["prompt_tokens"] - before["prompt_tokens"])
                                                / len(wins) / len(QUESTIONS), 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="base URL of a running server (default: start vLLM here)")
    parser.add_argument("--name", default=NAME, help="served model name (with --url)")
    parser.add_argument("--api-key-env", default=None, help="environment variable holding the API key (with --url)")
    parser.add_argument("--size", choices=["served", "small"], default="small", help="model built for the local vLLM")
    parser.add_argument("--window", type=float, default=10.0, help="window length in seconds")
    parser.add_argument("--windows", type=int, default=5, help="timed windows per mode")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")

    from monitor.engine.served import ServedModel

    proc = None
    with tempfile.TemporaryDirectory(prefix="bench-served-") as tmpdir:
        try:
            if args.url:
                url, name, key_env = args.url, args.name, args.api_key_env
            else:
                from monitor.testing.tiny.qwen2_audio import build

                model_dir = build(Path(tmpdir) / "model", size=args.size)
                port, key_env = free_port(), "BENCH_SERVED_KEY"
                os.environ[key_env] = "sk-bench-" + secrets.token_hex(8)
                started = time.monotonic()
                proc = start_vllm(model_dir, port, os.environ[key_env], Path(tmpdir) / "vllm.log")
                print(json.dumps({"bench": "served", "event": "vllm ready", "size": args.size,
                                  "start_s": round(time.monotonic() - started, 1)}), flush=True)
                url, name = f"http://127.0.0.1:{port}/v1", NAME
            settings = dict(backend="openai", url=url, name=name, api_key_env=key_env, timeout=120)
            concurrent = ServedModel.load(ModelSettings(**settings))
            sequential = ServedModel.load(ModelSettings(**settings, concurrency=1))
            root = concurrent.client.root
            concurrent.calibrate(QUESTIONS, args.window)
            sequential.calibrate(QUESTIONS, args.window)
            run_mode(concurrent, windows(1, args.window, seed=99), root)  # warm-up
            lines = {}
            for seed, (mode, backend) in enumerate((("sequential", sequential), ("concurrent", concurrent)), start=1):
                lines[mode] = run_mode(backend, windows(args.windows, args.window, seed=seed), root)
                print(json.dumps({"bench": "served", "mode": mode, "questions": len(QUESTIONS), "window_s": args.window,
                                  "windows": args.windows, "scoring": backend.scoring.mode, **lines[mode]}), flush=True)
        finally:
            if proc is not None:
                stop_vllm(proc)
        vllm_version = subprocess.run([str(VLLM_PYTHON), "-c", "import vllm; print(vllm.__version__)"],
                                      capture_output=True, text=True).stdout.strip() if VLLM_PYTHON.exists() else None
        print(json.dumps({"bench": "served", "speedup": round(lines["sequential"]["ms_per_window"]
                                                              / lines["concurrent"]["ms_per_window"], 2),
                          "server": "local vLLM " + str(vllm_version) if proc is not None else url,
                          "size": args.size if proc is not None else None, "machine": platform.machine(),
                          "cpus": os.cpu_count(), "python": platform.python_version()}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
