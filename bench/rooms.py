"""A whole home on one engine: many rooms' windows in one batch, and the encoder cropped to the window.

    python bench/rooms.py --size small             # CPU, ~63M-parameter Qwen2-Audio, random weights
    python bench/rooms.py --size full              # GPU, the full Qwen2-Audio-7B architecture in bf16
    python bench/rooms.py --size tiny --repeats 1  # smoke run
    python bench/rooms.py --size small --dtypes float32,bfloat16   # each dtype in its own process, compared

Prints JSON lines:

- per N rooms (1, 2, 4, 8; 8 s windows, P = 8 yes/no questions, each room its own audio and its
  own question set): `batched_ms`, the engine time of one hop — one window of every room
  answered by `Engine.answer` as one batch — against `one_by_one_ms`, the same windows through
  `Engine.run` one after the other; `max_abs_diff` between their scores;
- per window length S (2, 8, 30 s; P = 8): `padded_ms` (the encoder over 30 s of padded
  features, the model's own path) against `cropped_ms` (over the window's frames), per window,
  with the encoder alone beside it; `max_abs_diff` between their scores;
- `realtime_rooms`: the most rooms the engine keeps up with at a 2 s hop — the largest N whose
  batched time per hop stays under 2 s, measured (N grows by 4 past 8 until a hop no longer
  fits; batches larger than `max_batch` are answered in chunks, as the worker would).

Each figure is the median of `--repeats` timed passes (after an untimed one); the two ways
alternate which goes first, as often each way, so a machine that slows down or speeds up
favours neither. N = 1 times the same code both ways: its ratio shows the noise of the machine.

`--dtypes A,B` runs it once per dtype, each in a child process (bench/bydtype.py), on one
checkpoint stored in bfloat16; every line gains `max_abs_diff_vs_fp32` (the rooms' batched scores
against float32's), and one summary line per dtype gives `realtime_rooms` beside float32's and the
peak resident size (`rss_mb`, and `model_rss_mb`: what loading and answering added).
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import bydtype  # noqa: E402
from bench.engine import QUESTIONS, load_engine, speech_window  # noqa: E402
from monitor.engine.api import Question, Request, Result  # noqa: E402
from monitor.engine.settings import ModelSettings  # noqa: E402
from monitor.testing.signals import make_window, noise, tone  # noqa: E402

ROOMS = (1, 2, 4, 8)
WINDOW_S = 8
P = 8
HOP_S = 2
LENGTHS = (2, 8, 30)

log = logging.getLogger("bench.rooms")


def make_engine(size: str, device: str, dtype: str | None, model_dir: Path | None, tmp: Path):
    """tiny/small: built to disk and loaded the daemon's way; full: built in place on the device."""
    from monitor.engine.local.engine import Engine
    from monitor.engine.placement import Placement
    from monitor.testing.tiny import qwen2_audio as tiny_model

    if size == "full":
        dtype = dtype or "bfloat16"
        settings = ModelSettings(path=None, device=device, dtype=dtype)
        processor = tiny_model.make_processor()
        model = tiny_model.make_model("full", processor, dtype=dtype, device=device)
        return Engine(model, processor, settings, Placement(device, dtype))
    folder = model_dir or tiny_model.build(tmp / f"{size}-model", size=size)
    return load_engine(folder, device, dtype)


def room_audio(room: int, seconds: float, speech: np.ndarray) -> np.ndarray:
    """Room 0 hears speech; the others noise and a hum of their own."""
    if room == 0:
        return np.resize(speech, round(seconds * 16000)).astype(np.float32)
    return noise(seconds, 0.02 + 0.01 * (room % 7), seed=100 + room) + tone(seconds, 80.0 + 37.0 * room, 0.1)


def room_request(room: int, seconds: float, speech: np.ndarray, seq: int = 0) -> Request:
    """A room's window and its own P questions (each room asks a different set of the 16)."""
    questions = tuple(Question(f"r{room}q{j}", QUESTIONS[(3 * room + j) % len(QUESTIONS)]) for j in range(P))
    return Request(make_window(room_audio(room, seconds, speech), seq=seq), questions, source=f"room{room}")


def timed(fn, sync) -> tuple[float, Any]:
    gc.collect()  # the previous call's garbage is not collected on this one's clock
    sync()
    started = time.perf_counter()
    out = fn()
    sync()
    return (time.perf_counter() - started) * 1000, out


def max_diff(a: list[Result], b: list[Result]) -> float:
    diff = 0.0
    for x, y in zip(a, b, strict=True):
        assert x.error is None and y.error is None, (x.error, y.error)
        diff = max([diff] + [abs(x.scores[k].score - y.scores[k].score) for k in x.scores])
    return diff


def compare(first, second, repeats: int, sync) -> tuple[float, float, Any, Any]:
    """Median ms of two ways of doing the same work (after one untimed call each).

    They alternate which goes first, an even number of times, so that neither is favoured by
    going first or second (a median of an odd count would be).
    """
    a_ms, b_ms = [], []
    a_out, b_out = first(), second()
    for r in range(repeats + repeats % 2):
        order = [(first, a_ms), (second, b_ms)] if r % 2 == 0 else [(second, b_ms), (first, a_ms)]
        for fn, times in order:
            ms, out = timed(fn, sync)
            times.append(ms)
            if fn is first:
                a_out = out
            else:
                b_out = out
    return statistics.median(a_ms), statistics.median(b_ms), a_out, b_out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=["tiny", "small", "full"], default="small")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda for full, else cpu)")
    parser.add_argument("--dtype", default=None, help="float32, bfloat16 (default: the daemon's auto)")
    parser.add_argument("--dtypes", default=None, help="comma-separated: one child process per dtype, compared with float32")
    parser.add_argument("--emit-scores", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--repeats", type=int, default=8, help="timed passes per figure, rounded up to even "
                        "(the median is printed)")
    parser.add_argument("--model-dir", type=Path, default=None, help="reuse a checkpoint built by monitor.testing.tiny_model")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--max-rooms", type=int, default=64, help="stop the real-time search here")
    args = parser.parse_args(argv)
    if args.dtypes:
        try:
            return by_dtype(args, bydtype.parse_dtypes(args.dtypes))
        except ValueError as exc:
            parser.error(str(exc))
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    logging.getLogger("monitor.engine.local.selfcheck").setLevel(logging.INFO)

    import torch
    import transformers

    if args.threads:
        torch.set_num_threads(args.threads)
    device = args.device or ("cuda" if args.size == "full" else "cpu")
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    with tempfile.TemporaryDirectory(prefix="bench-rooms-") as tmpdir:
        tmp = Path(tmpdir)
        speech, real_speech = speech_window(30.0, tmp)
        rss_before = bydtype.peak_rss_mb()
        engine = make_engine(args.size, device, args.dtype, args.model_dir, tmp)
        common = {
            "bench": "rooms", "size": args.size, "params_m": round(sum(p.numel() for p in engine.model.parameters()) / 1e6, 1),
            "device": device, "dtype": engine.placement.dtype, "encoder": engine.encoder_path,
            "max_batch": engine.max_batch, "speech": real_speech, "torch": torch.__version__,
            "transformers": transformers.__version__, "threads": torch.get_num_threads(), "machine": platform.machine(),
            "gpu": torch.cuda.get_device_name(0) if device.startswith("cuda") else None, **bydtype.cpu(),
        }

        def emit(line: dict[str, Any]) -> None:
            rss = {"rss_mb": bydtype.peak_rss_mb(), "model_rss_mb": round(bydtype.peak_rss_mb() - rss_before, 1)}
            print(json.dumps({**line, **common, **rss, "load": bydtype.load_average()}), flush=True)

        engine.calibrate(QUESTIONS, WINDOW_S)
        rooms = [room_request(i, WINDOW_S, speech, seq=i) for i in range(max(ROOMS))]
        engine.answer(rooms)  # warm-up: first calls allocate and pick kernels (compare() warms each case too)

        batched: dict[int, float] = {}
        for n in ROOMS:
            batch = rooms[:n]
            b_ms, o_ms, b_out, o_out = compare(lambda b=batch: engine.answer(b),
                                               lambda b=batch: [engine.run(r) for r in b], args.repeats, sync)
            batched[n] = b_ms
            line = {"sources": n, "questions": P, "batched_ms": round(b_ms, 1), "one_by_one_ms": round(o_ms, 1),
                    "max_abs_diff": float(f"{max_diff(b_out, o_out):.3g}"), "ratio": round(b_ms / o_ms, 3),
                    "window_s": WINDOW_S}
            if args.emit_scores:
                line["scores"] = [r.scores[k].score for r in b_out for k in sorted(r.scores)]
            emit(line)

        encoder = engine.encoder
        for seconds in LENGTHS:
            engine.calibrate(QUESTIONS, seconds)
            request = room_request(0, seconds, speech)

            def padded(r=request):
                engine.encoder = None
                try:
                    return [engine.run(r)]
                finally:
                    engine.encoder = encoder

            p_ms, c_ms, p_out, c_out = compare(padded, lambda r=request: [engine.run(r)], args.repeats, sync)
            line = {"window_s": seconds, "padded_ms": round(p_ms, 1), "cropped_ms": round(c_ms, 1),
                    "max_abs_diff": float(f"{max_diff(p_out, c_out):.3g}"), "speedup": round(p_ms / c_ms, 2),
                    "questions": P}
            if encoder is not None:
                clip = engine.clip(request.window.audio)
                feats = clip.features["input_features"]
                with torch.inference_mode():
                    e_pad, e_crop, _, _ = compare(lambda f=feats, n=clip.frames: encoder.padded(f, [n]),
                                                  lambda f=feats, n=clip.frames: encoder.cropped(f, [n]),
                                                  args.repeats, sync)
                line.update(encoder_padded_ms=round(e_pad, 1), encoder_cropped_ms=round(e_crop, 1))
            emit(line)

        engine.calibrate(QUESTIONS, WINDOW_S)
        hop_ms = HOP_S * 1000
        measured = dict(batched)

        def measure(n: int) -> bool:
            if n not in measured:
                batch = [room_request(i, WINDOW_S, speech, seq=i) for i in range(n)]
                measured[n] = statistics.median(
                    timed(lambda: engine.answer(batch), sync)[0] for _ in range(max(1, args.repeats // 2)))
            return measured[n] < hop_ms

        n = max(ROOMS)
        while measured[n] < hop_ms and n < args.max_rooms:  # coarse: 4 rooms more at a time
            n += 4
            measure(n)
        fits = max((k for k, ms in measured.items() if ms < hop_ms), default=0)
        over = min((k for k, ms in measured.items() if ms >= hop_ms and k > fits), default=fits + 1)
        for k in range(fits + 1, over):  # fine: between the last that fits and the first that does not
            if not measure(k):
                break
            fits = k
        emit({"realtime_rooms": fits, "hop_s": HOP_S, "questions": P, "window_s": WINDOW_S,
              "batched_ms_per_hop": {str(k): round(v, 1) for k, v in sorted(measured.items())},
              "method": "measured: the largest N whose batched time per hop is under the hop"})
    return 0


def by_dtype(args: argparse.Namespace, dtypes: list[str]) -> int:
    """The bench once per dtype, each in a child process, on one bfloat16-stored checkpoint; compared with float32."""
    from monitor.testing.tiny import qwen2_audio as tiny_model

    script = Path(__file__).resolve()
    summaries: dict[str, dict[str, Any]] = {}
    reference: dict[int, list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-rooms-") as tmpdir:
        model_dir = args.model_dir
        if model_dir is None and args.size != "full":
            model_dir = tiny_model.build(Path(tmpdir) / f"{args.size}-model", size=args.size, dtype="bfloat16")
        for dtype in dtypes:
            argv = ["--size", args.size, "--dtype", dtype, "--repeats", str(args.repeats),
                    "--max-rooms", str(args.max_rooms), "--emit-scores"]
            for flag, value in (("--device", args.device), ("--threads", args.threads), ("--model-dir", model_dir)):
                if value is not None:
                    argv += [flag, str(value)]
            diffs = []
            for line in bydtype.run_child(script, argv):
                scores = line.pop("scores", None)
                if "sources" in line:
                    if dtype == "float32":
                        reference[line["sources"]] = scores
                    line["max_abs_diff_vs_fp32"] = bydtype.max_abs_diff(scores, reference.get(line["sources"]))
                    diffs.append(line["max_abs_diff_vs_fp32"])
                if "realtime_rooms" in line:
                    summaries[dtype] = {
                        "bench": "rooms", "summary": True, "size": args.size, "dtype": dtype,
                        "realtime_rooms": line["realtime_rooms"], "hop_s": line["hop_s"], "window_s": line["window_s"],
                        "questions": line["questions"], "batched_ms_per_hop": line["batched_ms_per_hop"],
                        "encoder": line["encoder"], "rss_mb": line["rss_mb"], "model_rss_mb": line["model_rss_mb"],
                        "max_abs_diff_vs_fp32": max((d for d in diffs if d is not None), default=None)}
                print(json.dumps(line), flush=True)
    fp32 = summaries.get("float32")
    for dtype, summary in summaries.items():
        if fp32 is not None:
            summary["realtime_rooms_vs_fp32"] = round(summary["realtime_rooms"] / fp32["realtime_rooms"], 2) \
                if fp32["realtime_rooms"] else None
            summary["model_rss_mb_vs_fp32"] = round(summary["model_rss_mb"] / fp32["model_rss_mb"], 3)
        summary.update(**bydtype.cpu(), load=bydtype.load_average())
        print(json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
