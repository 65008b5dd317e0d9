"""Replay, eval and compare costs: how fast a recording replays, what the threshold sweep adds, what a phrasing costs.

    python bench/tuning.py --size tiny --minutes 10        # a quick CPU run
    python bench/tuning.py --size small --minutes 10
    python bench/tuning.py --size small --compare          # compare: time per clip for 1, 4 and 16 phrasings

Makes a recording of background hiss with loud bursts (numpy), builds a random-weight
Qwen2-Audio of the given size, then measures:

- `replay`: `replay_file` over the recording in fast mode (the daemon's pipeline, every window
  answered): seconds of wall time and the real-time factor (audio seconds per wall second);
- `sweep`: `build_report` on the recorded answers — the rule engine re-run for the configured
  rules and 21 thresholds, no model calls — in ms, and per window per pass in microseconds.

Prints one JSON line with the figures, the versions and the machine.

`--compare` instead saves labelled clips through the label writer (`--clips`, half positive, each
a window of `--window` with 2 s before and after) and times `compare`'s scoring of them
(`monitor.tuning.compare.score_clips`: one request per clip, every phrasing packed in it) for 1, 4
and 16 phrasings: one JSON line per count, with the time per clip, the forwards per clip, and the
time per clip of asking each phrasing in a request of its own (what it would cost without packing;
on the first `--alone-clips` clips).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from monitor.config import load_config  # noqa: E402
from monitor.rules import parse_rules  # noqa: E402
from monitor.tuning.eval import THRESHOLDS, build_report, without_schedules  # noqa: E402
from monitor.tuning.labels import Dataset, Recording  # noqa: E402
from monitor.tuning.replay import replay_file  # noqa: E402

RATE = 16_000
RULES = """\
rules:
  - id: loud
    ask: Does this recording contain any sound at all? Answer yes or no.
    threshold: 0.5
    gate: {min_dbfs: -40}
    patience: 2
    hold: 5s
  - id: dog
    ask: Does this recording contain a dog barking? Answer yes or no.
    use: lift
    threshold: 0.2
  - id: glass
    ask: Does this recording contain the sound of glass breaking or shattering? Answer yes or no.
    threshold: 0.7
    gate: {min_dbfs: -50}
"""


def recording(path: Path, minutes: float) -> list[tuple[float, float]]:
    rng = np.random.default_rng(0)
    n = int(minutes * 60 * RATE)
    audio = (rng.standard_normal(n) * 1e-3).astype(np.float32)
    bursts = [(float(s), float(s) + 3.0) for s in range(20, int(minutes * 60) - 5, 60)]
    for a, b in bursts:
        audio[int(a * RATE):int(b * RATE)] = rng.standard_normal(int((b - a) * RATE)) * 0.2
    sf.write(path, audio, RATE)
    return bursts


PHRASES = ["Does this recording contain {}?", "Can you hear {} in this recording?", "Is there {} here?",
           "Do you hear {}?"]
THINGS = ["any sound at all", "a loud noise", "a sudden burst of sound", "something other than quiet hiss"]


def phrasings(n: int) -> list[str]:
    return [f"{PHRASES[i % 4].format(THINGS[i // 4 % 4])} Answer yes or no." for i in range(n)]


def bench_compare(args: argparse.Namespace, model_dir: Path, tmp_path: Path) -> None:
    import torch

    from monitor.engine.api import Question, Request
    from monitor.engine.local.engine import Engine
    from monitor.engine.settings import ModelSettings
    from monitor.labels.store import Label, LabelStore, read_labels
    from monitor.tuning.compare import clip_window, score_clips
    from monitor.configtypes import parse_duration

    window = parse_duration(args.window)
    rng = np.random.default_rng(1)
    store = LabelStore(tmp_path / "labels")
    for i in range(args.clips):
        audio = (rng.standard_normal(int((window + 4) * RATE)) * 1e-3).astype(np.float32)
        if i % 2 == 0:
            audio[3 * RATE:5 * RATE] = rng.standard_normal(2 * RATE) * 0.2
        store.save(Label("home", "loud", "positive" if i % 2 == 0 else "negative", audio, 1.8e9 + i,
                         event=f"e{i}", window=(2.0, 2.0 + window)))
    clips = read_labels(store.folder)
    engine = Engine.load(ModelSettings(path=model_dir))
    forwards = []
    plain = engine._forward

    def counting(**inputs):
        forwards.append(1)
        return plain(**inputs)

    engine._forward = counting
    for n in (1, 4, 16):
        prompts = phrasings(n)
        engine.calibrate(prompts, window)
        score_clips(engine, clips[:1], prompts, "score", window)  # warm up
        forwards.clear()
        started = time.perf_counter()
        scored = score_clips(engine, clips, prompts, "score", window)
        packed_s = (time.perf_counter() - started) / len(clips)
        packed_forwards = len(forwards) / len(clips)
        alone = clips[:args.alone_clips]  # each phrasing in a request of its own: slow, so on fewer clips
        started = time.perf_counter()
        for clip in alone:
            w = clip_window(clip)
            for p in prompts:
                engine.answer([Request(w, (Question("alone", p),))])
        alone_s = (time.perf_counter() - started) / len(alone)
        print(json.dumps({
            "bench": "compare", "size": args.size, "window": args.window, "clips": scored.requests, "phrasings": n,
            "s_per_clip": round(packed_s, 4), "forwards_per_clip": packed_forwards,
            "alone_s_per_clip": round(alone_s, 4), "packed_speedup": round(alone_s / packed_s, 2),
            "scoring": engine.scoring_path, "encoder": engine.encoder_path, "torch": torch.__version__,
            "machine": platform.machine(), "cpus": os.cpu_count(), "threads": torch.get_num_threads(),
        }), flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="tiny", choices=["tiny", "small"])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--window", default="8s")
    parser.add_argument("--hop", default="2s")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--compare", action="store_true", help="time compare's scoring for 1, 4 and 16 phrasings")
    parser.add_argument("--clips", type=int, default=8, help="with --compare: labelled clips scored")
    parser.add_argument("--alone-clips", type=int, default=2,
                        help="with --compare: clips on which each phrasing is also asked alone, for the comparison")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    import torch
    import transformers

    from monitor.testing.tiny.qwen2_audio import build

    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        build(tmp_path / "model", size=args.size)
        if args.compare:
            bench_compare(args, tmp_path / "model", tmp_path)
            return 0
        wav = tmp_path / "long.wav"
        bursts = recording(wav, args.minutes)
        (tmp_path / "rules.yaml").write_text(RULES)
        (tmp_path / "monitor.yaml").write_text(
            f"audio: {{source: 'file:{wav}', realtime: false, buffer_seconds: 60}}\n"
            f"windows: {{length: {args.window}, hop: {args.hop}}}\n"
            f"model: {{path: '{tmp_path / 'model'}', device: cpu}}\nrules: rules.yaml\n")
        config = load_config(tmp_path / "monitor.yaml")
        ruleset = without_schedules(parse_rules(RULES))
        started = time.perf_counter()
        run = replay_file(config, ruleset)
        replay_s = time.perf_counter() - started
        rec = Recording(wav, run.duration, "labelled", {"loud": tuple(bursts), "glass": ()})
        dataset = Dataset(tmp_path, "labels", [rec])
        started = time.perf_counter()
        build_report(config, ruleset, dataset, [(rec, run)], max_fa_per_hour=1.0)
        sweep_ms = (time.perf_counter() - started) * 1000
    passes = len(THRESHOLDS) + 1
    print(json.dumps({
        "bench": "tuning", "size": args.size, "audio_s": round(run.duration, 1), "windows": run.windows,
        "window": args.window, "hop": args.hop, "rules": len(ruleset.rules),
        "replay_s": round(replay_s, 2), "replay_x_real_time": round(run.duration / replay_s, 1),
        "sweep_ms": round(sweep_ms, 1), "sweep_passes": passes,
        "sweep_us_per_window_pass": round(sweep_ms * 1000 / (run.windows * passes), 1),
        "torch": torch.__version__, "transformers": transformers.__version__, "python": platform.python_version(),
        "machine": platform.machine(), "cpus": os.cpu_count(), "threads": torch.get_num_threads(),
    }))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
