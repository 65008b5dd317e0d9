"""Standing questions per window: the engine against the naive way, on the same model and windows.

    python bench/engine.py --size small            # CPU, ~63M-parameter Qwen2-Audio, random weights
    python bench/engine.py --size full             # GPU, the full Qwen2-Audio-7B architecture in bf16
    python bench/engine.py --arch salmonn --size small   # CPU, SALMONN with the 7B's proportions, reduced width
    python bench/engine.py --arch af3 --size small # another family (monitor.testing.tiny), CPU

Naive = what one would write first: for every question, the processor re-encodes the audio and
`generate()` answers it (greedy, max_new_tokens=3), and the answer is parsed as yes/no. For
SALMONN, naive is the original's way: Whisper, BEATs and the Q-Former re-run for every question,
whose full prompt embeddings go to `generate()`.
Engine = `Engine.run`: the audio prefix once per window, all yes/no questions in one forward.

Prints one JSON line per P (questions per window): ms per window of each, their ratio, the
marginal cost of each question beyond the first (in % of a one-question window), and the
largest difference between the engine's scores and the plain full forward of each question.
Windows are real speech (espeak-ng, when installed) and noise, made here.
"""

from __future__ import annotations

import argparse
import json
import logging
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
    subprocess.run([sox, str(raw), "-r", str(RATE), "-c", "1", str(wav)], check=True, capture_output=True)
    audio, _ = sf.read(wav, dtype="float32")
    n = int(round(seconds * RATE))
    return np.resize(audio, n).astype(np.float32) + noise(seconds, 0.003, seed=5), True


def make_engine(size: str, device: str, model_dir: Path | None, tmp: Path, arch: str = "qwen2_audio"):
    """tiny/small: built to disk and loaded the daemon's way; full: built in place on the device."""
    from monitor.engine.backends import load_backend
    from monitor.engine.local.engine import Engine
    from monitor.engine.placement import Placement
    from monitor.testing.tiny import qwen2_audio

    if arch == "salmonn":
        folder = model_dir or tiny.build(tmp / f"salmonn-{size}", "salmonn", size=size)
        return load_backend(ModelSettings(backend="salmonn", device=device, salmonn=dict(
            checkpoint=folder / "checkpoint.pth", beats=folder / "beats.pt", whisper=folder / "whisper",
            llm=folder / "llm")))

    if size == "full":
        dtype = "bfloat16" if device.startswith("cuda") else "float32"
        settings = ModelSettings(path=None, device=device, dtype=dtype)
        processor = qwen2_audio.make_processor()
        model = qwen2_audio.make_model("full", processor, dtype=dtype, device=device)
        return Engine(model, processor, settings, Placement(device, dtype))
    folder = model_dir or tiny.build(tmp / f"{arch}-{size}-model", arch, size=size)
    return Engine.load(ModelSettings(path=folder, device=device))


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


def timed(fn, sync) -> float:
    sync()
    started = time.perf_counter()
    fn()
    sync()
    return (time.perf_counter() - started) * 1000


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=["tiny", "small", "full"], default="small")
    parser.add_argument("--arch", default="qwen2_audio", choices=list(tiny.builders()),
                        help="model family, as monitor.testing.tiny builds it (qwen2_audio: tiny, small, full; the "
                        "others: tiny, small)")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda for full, else cpu)")
    parser.add_argument("--window", type=float, default=10.0, help="window length in seconds")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes over the windows")
    parser.add_argument("--model-dir", type=Path, default=None, help="reuse a checkpoint built by monitor.testing.tiny_model")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--ps", type=int, nargs="+", default=list(PS), help="questions per window to measure")
    args = parser.parse_args(argv)
    if args.size not in tiny.sizes(args.arch):
        parser.error(f"--arch {args.arch} takes --size {' or '.join(tiny.sizes(args.arch))}")
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")

    import torch
    import transformers

    if args.threads:
        torch.set_num_threads(args.threads)
    device = args.device or ("cuda" if args.size == "full" else "cpu")
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    with tempfile.TemporaryDirectory(prefix="bench-engine-") as tmpdir:
        tmp = Path(tmpdir)
        engine = make_engine(args.size, device, args.model_dir, tmp, args.arch)
        speech, real_speech = speech_window(args.window, tmp)
        windows = [make_window(speech, seq=0), make_window(noise(args.window, 0.1, seed=3), seq=1, start=len(speech))]
        engine.calibrate(QUESTIONS, args.window)
        params = sum(p.numel() for p in engine.model.parameters())
        # warm-up: first calls allocate and pick kernels
        engine.run(Request(windows[0], tuple(Question(f"q{i}", q) for i, q in enumerate(QUESTIONS))))
        naive_window(engine, windows[0].audio, QUESTIONS[:1])

        one_question_ms, one_p = None, 1
        for p in args.ps:
            prompts = QUESTIONS[:p]
            request_questions = tuple(Question(f"q{i}", q) for i, q in enumerate(prompts))
            engine_ms, naive_ms, answers = [], [], {"yes": 0, "no": 0, "other": 0}
            for _ in range(args.repeats):
                for w in windows:
                    req = Request(w, request_questions)
                    engine_ms.append(timed(lambda req=req: engine.run(req), sync))
                    got: list[str] = []
                    naive_ms.append(timed(lambda w=w, got=got, ps=prompts: got.extend(naive_window(engine, w.audio, ps)), sync))
                    for a in got:
                        answers[a] += 1
            diff = 0.0
            for w in windows:
                result = engine.run(Request(w, request_questions))
                assert result.error is None, result.error
                plain = engine.score_plain(w.audio, prompts)
                diff = max(diff, max(abs(result.scores[f"q{i}"].score - plain[q][0]) for i, q in enumerate(prompts)))
            e_ms, n_ms = statistics.median(engine_ms), statistics.median(naive_ms)
            if one_question_ms is None:  # the smallest P measured (1 by default)
                one_question_ms, one_p = e_ms, p
            line = {
                "bench": "engine", "arch": args.arch, "size": args.size, "scoring": engine.scoring_path, "params_m": round(params / 1e6, 1), "device": device,
                "dtype": engine.placement.dtype, "window_s": args.window, "P": p,
                "naive_ms": round(n_ms, 1), "engine_ms": round(e_ms, 1), "speedup": round(n_ms / e_ms, 2),
                "marginal_pct": None if p == one_p else round((e_ms - one_question_ms) / (p - one_p) / one_question_ms * 100, 2),
                "max_abs_diff": float(f"{diff:.3g}"), "naive_answers": answers,
                "windows": len(windows) * args.repeats, "speech": real_speech,
                "torch": torch.__version__, "transformers": transformers.__version__,
                "threads": torch.get_num_threads(), "machine": platform.machine(),
                "gpu": torch.cuda.get_device_name(0) if device.startswith("cuda") else None,
            }
            print(json.dumps(line), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
