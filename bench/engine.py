"""Standing questions per window: the engine against the naive way, on the same model and windows.

    python bench/engine.py --size small            # CPU, ~63M-parameter Qwen2-Audio, random weights
    python bench/engine.py --size full             # GPU, the full Qwen2-Audio-7B architecture in bf16
    python bench/engine.py --arch salmonn --size small   # CPU, SALMONN with the 7B's proportions, reduced width
    python bench/engine.py --arch af3 --size small # another family (monitor.testing.tiny), CPU
    python bench/engine.py --size small --dtypes float32,bfloat16   # each dtype in its own process, compared
    python bench/engine.py --size slice --dtypes float32,bfloat16   # the 7B's widths, a few layers: projected

Naive = what one would write first: for every question, the processor re-encodes the audio and
`generate()` answers it (greedy, max_new_tokens=3), and the answer is parsed as yes/no. For
SALMONN, naive is the original's way: Whisper, BEATs and the Q-Former re-run for every question,
whose full prompt embeddings go to `generate()`.
Engine = `Engine.run`: the audio prefix once per window, all yes/no questions in one forward.

Prints one JSON line per P (questions per window): ms per window of each, their ratio, the
marginal cost of each question beyond the first (in % of a one-question window), and the
largest difference between the engine's scores and the plain full forward of each question.
Windows are real speech (espeak-ng, when installed) and noise, made here.

`--dtypes A,B` runs the bench once per dtype in a child process each (bench/bydtype.py) and adds
to every line `max_abs_diff_vs_fp32` (the engine's scores against float32's on the same windows
and weights) and `engine_ms_vs_fp32`, then prints one summary line per dtype. `--size slice` is
Qwen2-Audio-7B at its real widths with a few layers (no naive run: it would take minutes per
window); with `--dtypes` it runs at `--depths` (default 1, 2, 4) and projects the full 32 + 32
layers from the two shallowest, checked against the deepest.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import bydtype  # noqa: E402
from monitor.engine.api import Question, Request  # noqa: E402
from monitor.engine.settings import ModelSettings  # noqa: E402
from monitor.testing import tiny  # noqa: E402
from monitor.testing.signals import RATE, make_window, noise  # noqa: E402

# Phrased like the shipped rules (rules/home.yaml): 18-38 tokens after the shared prefix.
QUESTIONS = [f"Does this recording contain {thing}? Answer yes or no." for thing in (
    "a baby or an infant crying",
    "the sound of a person falling down: a heavy thud or crash followed by a cry, groan or moan of pain",
    "the sound of glass breaking or shattering",
    "the loud, repeating, high-pitched beeping of a smoke alarm or carbon monoxide alarm",
    "a dog barking",
    "a doorbell ringing or someone knocking on a door",
    "a person screaming, shrieking, or crying out in fear, pain or distress",
    "a person coughing",
    "the sound of running water, such as a tap, a shower or a toilet cistern filling",
    "music playing",
    "a person speaking",
    "someone snoring",
    "a window or a door slamming",
    "a kettle whistling or water boiling",
    "a vacuum cleaner or a washing machine running",
    "a person crying or moaning in pain",
)]
SPEECH = ("Help! I have fallen in the kitchen and I cannot get up. Please call an ambulance. "
          "The dog is barking and the kettle is boiling.")
PS = (1, 2, 4, 8, 16)

log = logging.getLogger("bench.engine")


def speech_window(seconds: float, tmp: Path) -> tuple[np.ndarray, bool]:
    """espeak-ng speech tiled to the window length (noise if espeak-ng is missing)."""
    import soundfile as sf

    espeak, sox = shutil.which("espeak-ng"), shutil.which("sox")
    if not (espeak and sox):
        return noise(seconds, 0.1, seed=11), False
    raw, wav = tmp / "speech-raw.wav", tmp / "speech.wav"
    subprocess.run([espeak, "-w", str(raw), SPEECH], check=True, capture_output=True)
    # -R: sox seeds its dither the same every time, so that every run (and every dtype's child) hears the same window
    subprocess.run([sox, "-R", str(raw), "-r", str(RATE), "-c", "1", str(wav)], check=True, capture_output=True)
    audio, _ = sf.read(wav, dtype="float32")
    n = int(round(seconds * RATE))
    return np.resize(audio, n).astype(np.float32) + noise(seconds, 0.003, seed=5), True


def make_engine(size: str, device: str, model_dir: Path | None, tmp: Path, arch: str = "qwen2_audio",
                dtype: str | None = None, layers: int | None = None):
    """tiny/small: built to disk and loaded the daemon's way; full/slice: built in place on the device.

    `dtype` None: the daemon's `auto`; float64 (not a config value) is placed directly.
    """
    from monitor.engine.backends import load_backend
    from monitor.engine.local.engine import Engine
    from monitor.engine.placement import Placement
    from monitor.testing.tiny import qwen2_audio

    if arch == "salmonn":
        folder = model_dir or tiny.build(tmp / f"salmonn-{size}", "salmonn", size=size)
        return load_backend(ModelSettings(backend="salmonn", device=device, dtype=dtype or "auto", salmonn=dict(
            checkpoint=folder / "checkpoint.pth", beats=folder / "beats.pt", whisper=folder / "whisper",
            llm=folder / "llm")))

    if size in ("full", "slice"):
        dtype = dtype or ("bfloat16" if device.startswith("cuda") else "float32")
        settings = ModelSettings(path=None, device=device)
        processor = qwen2_audio.make_processor()
        model = qwen2_audio.make_model(size, processor, dtype=dtype, device=device, layers=layers)
        return Engine(model, processor, settings, Placement(device, dtype))
    folder = model_dir or tiny.build(tmp / f"{arch}-{size}-model", arch, size=size)
    return load_engine(folder, device, dtype)


def load_engine(folder: Path, device: str, dtype: str | None):
    """The daemon's `Engine.load` with `model.dtype: dtype`; a dtype the config does not take (float64) placed directly."""
    from pydantic import ValidationError

    from monitor.engine.local.engine import Engine
    from monitor.engine.local.loading import load_model
    from monitor.engine.placement import Placement

    try:
        return Engine.load(ModelSettings(path=folder, device=device, dtype=dtype or "auto"))
    except ValidationError:
        settings = ModelSettings(path=folder, device=device)
        placement = Placement(device, dtype)
        model, processor = load_model(settings, placement)
        return Engine(model, processor, settings, placement)


def naive_window(engine, audio: np.ndarray, prompts: list[str]) -> list[str]:
    """One generate() per question, audio re-encoded every time, answer parsed to yes/no/other."""
    import torch

    answers = []
    for prompt in prompts:
        with torch.inference_mode():
            if engine.family.name == "salmonn":  # the prompt's embeddings, its audio encoders run again
                inputs = engine._plain_inputs(engine.fit(audio), prompt)
                start = 0  # generate() from embeddings returns the new tokens only
            else:
                inputs = engine._plain_inputs(audio, prompt)  # the processor, as the model card shows
                start = inputs["input_ids"].shape[1]
            out = engine.model.generate(**inputs, max_new_tokens=3, do_sample=False)
        text = engine.tokenizer.decode(out[0, start:], skip_special_tokens=True)
        word = text.strip().split()[0].strip(".,!").lower() if text.strip() else ""
        answers.append(word if word in ("yes", "no") else "other")
    return answers


def timed(fn, sync, cpu_ms: list[float] | None = None) -> float:
    """Wall ms of fn(); its CPU ms (this process's, all threads) appended to `cpu_ms` if given."""
    sync()
    started, cpu_started = time.perf_counter(), time.process_time()
    fn()
    sync()
    if cpu_ms is not None:
        cpu_ms.append((time.process_time() - cpu_started) * 1000)
    return (time.perf_counter() - started) * 1000


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=["tiny", "small", "slice", "full"], default="small")
    parser.add_argument("--arch", default="qwen2_audio", choices=list(tiny.builders()),
                        help="model family, as monitor.testing.tiny builds it (qwen2_audio: tiny, small, slice, full; "
                        "the others: tiny, small)")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda for full, else cpu)")
    parser.add_argument("--dtype", default=None, help="float32, bfloat16, float16, float64 (default: the daemon's auto)")
    parser.add_argument("--dtypes", default=None, help="comma-separated: one child process per dtype, compared with float32")
    parser.add_argument("--layers", type=int, default=None, help="slice: text and audio layers (default 2)")
    parser.add_argument("--depths", default="1,2,4", help="slice with --dtypes: the depths run; the two shallowest "
                        "project the full model, the others check it")
    parser.add_argument("--fit-depths", default=None, help="slice: the depths the projection's line goes through "
                        "(default: the two shallowest); the others check it")
    parser.add_argument("--window", type=float, default=10.0, help="window length in seconds")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes over the windows")
    parser.add_argument("--model-dir", type=Path, default=None, help="reuse a checkpoint built by monitor.testing.tiny_model")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--ps", type=int, nargs="+", default=None,
                        help=f"questions per window to measure (default {' '.join(map(str, PS))}; slice: 8)")
    parser.add_argument("--naive", action=argparse.BooleanOptionalAction, default=None,
                        help="time the naive way too (default: yes, except for slice)")
    parser.add_argument("--plain-windows", type=int, default=None,
                        help="windows checked against the plain forward (default: all; slice: 1)")
    parser.add_argument("--emit-scores", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.size not in tiny.sizes(args.arch):
        parser.error(f"--arch {args.arch} takes --size {' or '.join(tiny.sizes(args.arch))}")
    wide = args.size in ("slice", "full")
    args.ps = args.ps or ([8] if args.size == "slice" else list(PS))
    args.naive = (not wide) if args.naive is None else args.naive
    args.plain_windows = args.plain_windows or (1 if wide else 2)
    if args.dtypes:
        try:
            return by_dtype(args, bydtype.parse_dtypes(args.dtypes))
        except ValueError as exc:
            parser.error(str(exc))
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    return run(args)


def run(args: argparse.Namespace) -> int:
    import torch
    import transformers

    if args.threads:
        torch.set_num_threads(args.threads)
    device = args.device or ("cuda" if args.size == "full" else "cpu")
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    with tempfile.TemporaryDirectory(prefix="bench-engine-") as tmpdir:
        tmp = Path(tmpdir)
        speech, real_speech = speech_window(args.window, tmp)
        rss_before = bydtype.peak_rss_mb()
        started = time.perf_counter()
        engine = make_engine(args.size, device, args.model_dir, tmp, args.arch, args.dtype, args.layers)
        load_s = time.perf_counter() - started
        windows = [make_window(speech, seq=0), make_window(noise(args.window, 0.1, seed=3), seq=1, start=len(speech))]
        engine.calibrate(QUESTIONS, args.window)
        params = sum(p.numel() for p in engine.model.parameters())
        layers = engine.model.config.text_config.num_hidden_layers if args.arch == "qwen2_audio" else None
        # warm-up: first calls allocate and pick kernels
        engine.run(Request(windows[0], tuple(Question(f"q{i}", q) for i, q in enumerate(QUESTIONS))))
        if args.naive:
            naive_window(engine, windows[0].audio, QUESTIONS[:1])

        one_question_ms, one_p = None, 1
        for p in args.ps:
            prompts = QUESTIONS[:p]
            request_questions = tuple(Question(f"q{i}", q) for i, q in enumerate(prompts))
            engine_ms, engine_cpu_ms, naive_ms, answers = [], [], [], {"yes": 0, "no": 0, "other": 0}
            for _ in range(args.repeats):
                for w in windows:
                    req = Request(w, request_questions)
                    engine_ms.append(timed(lambda req=req: engine.run(req), sync, engine_cpu_ms))
                    if not args.naive:
                        continue
                    got: list[str] = []
                    naive_ms.append(timed(lambda w=w, got=got, ps=prompts: got.extend(naive_window(engine, w.audio, ps)), sync))
                    for a in got:
                        answers[a] += 1
            diff, scores = 0.0, []
            for k, w in enumerate(windows):
                result = engine.run(Request(w, request_questions))
                assert result.error is None, result.error
                scores.extend(result.scores[f"q{i}"].score for i in range(len(prompts)))
                if k < args.plain_windows:
                    plain = engine.score_plain(w.audio, prompts)
                    diff = max(diff, max(abs(result.scores[f"q{i}"].score - plain[q][0]) for i, q in enumerate(prompts)))
            e_ms = statistics.median(engine_ms)
            n_ms = statistics.median(naive_ms) if naive_ms else None
            if one_question_ms is None:  # the smallest P measured (1 by default)
                one_question_ms, one_p = e_ms, p
            line = {
                "bench": "engine", "arch": args.arch, "size": args.size, "layers": layers, "scoring": engine.scoring_path,
                "encoder": engine.encoder_path, "params_m": round(params / 1e6, 1), "device": device,
                "dtype": engine.placement.dtype, "window_s": args.window, "P": p, "questions": p,
                "naive_ms": None if n_ms is None else round(n_ms, 1), "engine_ms": round(e_ms, 1),
                "engine_min_ms": round(min(engine_ms), 1), "engine_cpu_ms": round(statistics.median(engine_cpu_ms), 1),
                "speedup": None if n_ms is None else round(n_ms / e_ms, 2),
                "marginal_pct": None if p == one_p else round((e_ms - one_question_ms) / (p - one_p) / one_question_ms * 100, 2),
                "max_abs_diff": float(f"{diff:.3g}"), "naive_answers": answers if args.naive else None,
                "windows": len(windows) * args.repeats, "speech": real_speech,
                "rss_mb": bydtype.peak_rss_mb(), "model_rss_mb": round(bydtype.peak_rss_mb() - rss_before, 1),
                "load_s": round(load_s, 1), "torch": torch.__version__, "transformers": transformers.__version__,
                "threads": torch.get_num_threads(), "machine": platform.machine(), **bydtype.cpu(),
                "gpu": torch.cuda.get_device_name(0) if device.startswith("cuda") else None,
                "load": bydtype.load_average(),
            }
            if args.emit_scores:
                line["scores"] = scores
            print(json.dumps(line), flush=True)
    return 0


def child_argv(args: argparse.Namespace, dtype: str, model_dir: Path | None, layers: int | None) -> list[str]:
    argv = ["--size", args.size, "--arch", args.arch, "--dtype", dtype, "--window", str(args.window),
            "--repeats", str(args.repeats), "--ps", *map(str, args.ps), "--plain-windows", str(args.plain_windows),
            "--naive" if args.naive else "--no-naive", "--emit-scores"]
    for flag, value in (("--device", args.device), ("--threads", args.threads), ("--model-dir", model_dir),
                        ("--layers", layers)):
        if value is not None:
            argv += [flag, str(value)]
    return argv


def tolerance_vs_fp32(dtype: str, at: dict, fp32: dict, fp64: dict) -> dict:
    """The bound on |score - float32's| this model's conditioning sets (docs/engine.md, "Precision"), where
    float64 ran: G, its amplification of a rounding, from float32's scores against float64's at 8 questions."""
    import torch

    from monitor.engine.local.precision import amplification, between_dtypes

    g = None
    for depth, line in at.items():
        lines32, lines64 = fp32.get(depth), fp64.get(depth)
        if not lines32 or not lines64:
            return {"amplification": None, "tolerance_vs_fp32": None, "within_tolerance": None}
        want = next(x for x in lines64 if x["P"] == line["P"])["_scores"]
        got = next(x for x in lines32 if x["P"] == line["P"])["_scores"]
        g = max([g or 0.0] + [amplification(a, b, torch.float32) for a, b in zip(got, want, strict=True)])
    bound = between_dtypes(g, getattr(torch, dtype)) if dtype not in ("float32", "float64") else None
    diff = max((x["max_abs_diff_vs_fp32"] for x in at.values() if x["max_abs_diff_vs_fp32"] is not None), default=None)
    return {"amplification": float(f"{g:.3g}"), "tolerance_vs_fp32": None if bound is None else float(f"{bound:.3g}"),
            "within_tolerance": None if bound is None or diff is None else diff <= bound}


def by_dtype(args: argparse.Namespace, dtypes: list[str]) -> int:
    """Each dtype (and, for the slice, each depth) in a child process; lines compared with float32's; summaries."""
    from monitor.testing.tiny.qwen2_audio import FULL_LAYERS, count_parameters

    fit = [int(d) for d in args.fit_depths.split(",")] if args.fit_depths else None
    script = Path(__file__).resolve()
    depths = sorted({int(d) for d in args.depths.split(",")}) if args.size == "slice" else [args.layers]
    with tempfile.TemporaryDirectory(prefix="bench-engine-") as tmpdir:
        model_dir = args.model_dir
        if model_dir is None and args.size in ("tiny", "small") and args.arch != "salmonn":
            # One checkpoint for every dtype, stored in bfloat16 as the published ones are: float32 and
            # float64 load it exactly, so the dtypes differ in their arithmetic, not in their weights.
            stored = "bfloat16" if "bfloat16" in tiny.dtypes(args.arch) else "float32"
            model_dir = tiny.build(Path(tmpdir) / f"{args.arch}-{args.size}", args.arch, size=args.size, dtype=stored)
        lines: dict[tuple[str, int | None], list[dict]] = {}
        for dtype in dtypes:
            for depth in depths:
                got = bydtype.run_child(script, child_argv(args, dtype, model_dir, depth))
                reference = {line["P"]: line for line in lines.get(("float32", depth), [])}
                for line in got:
                    scores = line.pop("scores", None)
                    ref = reference.get(line["P"])
                    if dtype == "float32":
                        ref = {"_scores": scores, "engine_ms": line["engine_ms"]}
                    line["max_abs_diff_vs_fp32"] = bydtype.max_abs_diff(scores, ref and ref["_scores"])
                    line["engine_ms_vs_fp32"] = round(line["engine_ms"] / ref["engine_ms"], 3) if ref else None
                    print(json.dumps(line), flush=True)
                    line["_scores"] = scores
                lines[(dtype, depth)] = got
    summaries = []
    full_params = count_parameters("full") if args.size == "slice" else 0
    for dtype in dtypes:
        at = {depth: next((x for x in lines[(dtype, depth)] if x["P"] == 8), lines[(dtype, depth)][-1]) for depth in depths}
        deepest = at[depths[-1]]
        summary = {"bench": "engine", "summary": True, "arch": args.arch, "size": args.size, "dtype": dtype,
                   "questions": deepest["P"], "window_s": args.window,
                   "engine_ms": deepest["engine_ms"], "engine_min_ms": deepest.get("engine_min_ms"),
                   "engine_cpu_ms": deepest.get("engine_cpu_ms"), "naive_ms": deepest["naive_ms"],
                   "rss_mb": deepest["rss_mb"], "model_rss_mb": deepest["model_rss_mb"],
                   "max_abs_diff_vs_fp32": max((x["max_abs_diff_vs_fp32"] for x in at.values()
                                                if x["max_abs_diff_vs_fp32"] is not None), default=None),
                   "max_abs_diff_vs_plain": max(x["max_abs_diff"] for x in at.values())}
        summary.update(tolerance_vs_fp32(dtype, at, {d: lines.get(("float32", d)) for d in depths},
                                         {d: lines.get(("float64", d)) for d in depths}))
        if args.size == "slice":
            summary["layers"] = depths[-1]
            summary["engine_ms_by_layers"] = {str(d): x["engine_ms"] for d, x in at.items()}
            summary["engine_min_ms_by_layers"] = {str(d): x.get("engine_min_ms") for d, x in at.items()}
            summary["engine_cpu_ms_by_layers"] = {str(d): x.get("engine_cpu_ms") for d, x in at.items()}
            summary["model_rss_mb_by_layers"] = {str(d): x["model_rss_mb"] for d, x in at.items()}
            if len(depths) >= 2:
                # the fastest window of each depth: the one other work on the machine disturbed least
                time_fit = bydtype.projection({d: x.get("engine_min_ms") or x["engine_ms"] for d, x in at.items()},
                                              FULL_LAYERS, fit)
                rss_fit = bydtype.projection({d: x["model_rss_mb"] for d, x in at.items()}, FULL_LAYERS)
                # what a loaded full model holds: its weights, counted, and what the deepest slice held beyond its own
                weights_mb = bydtype.weights_mb(full_params, dtype)
                overhead_mb = deepest["model_rss_mb"] - bydtype.weights_mb(deepest["params_m"] * 1e6, dtype)
                summary.update(full_weights_mb=round(weights_mb, 1), overhead_mb=round(overhead_mb, 1))
                if all(x.get("engine_cpu_ms") for x in at.values()):
                    cpu_fit = bydtype.projection({d: x["engine_cpu_ms"] for d, x in at.items()}, FULL_LAYERS, fit)
                    summary.update(projected_full_cpu_ms=cpu_fit["full"], cpu_projection=cpu_fit)
                summary.update(projected_full_ms=time_fit["full"], projection=time_fit,
                               projected_full_rss_mb=round(weights_mb + overhead_mb, 1), rss_projection=rss_fit,
                               realtime_rooms=int(2000 // time_fit["full"]) if time_fit["full"] else None, hop_s=2,
                               one_room_hop_s=math.ceil(time_fit["full"] / 1000) if time_fit["full"] else None,
                               realtime_method="projected: rooms whose windows fit a 2 s hop, one after another "
                               "(on a CPU a batch costs about its windows one by one, rooms.py)")
        summaries.append(summary)
    fp32 = next((s for s in summaries if s["dtype"] == "float32"), None)
    for summary in summaries:
        if fp32 is not None:
            for key in ("engine_ms", "engine_cpu_ms", "model_rss_mb", "projected_full_ms", "projected_full_cpu_ms",
                        "projected_full_rss_mb"):
                if summary.get(key) is not None and fp32.get(key):
                    summary[f"{key}_vs_fp32"] = round(summary[key] / fp32[key], 3)
        summary.update(**bydtype.cpu(), load=bydtype.load_average())
        print(json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
