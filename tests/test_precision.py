"""Precision: which dtype `auto` picks on a CPU, the fast paths exact in float64, the self-check in bfloat16."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from monitor.engine import placement as placement_module
from monitor.engine.local import selfcheck
from monitor.engine.frames import audio_tokens
from monitor.engine.local.encoder import TOLERANCE, CroppedEncoder
from monitor.engine.local.engine import Engine
from monitor.engine.placement import cpu_bf16, resolve_placement
from monitor.engine.settings import ModelSettings
from monitor.testing.signals import noise, tone

QUESTIONS = [
    "Is a dog barking?",
    "Is a baby or an infant crying in this recording?",
    "Is someone falling down or has a person fallen to the floor? Listen for a thud, a crash or a body hitting "
    "the ground, followed by a groan or someone calling for help. Answer yes or no.",
]
WINDOWS = [noise(0.5, seed=51), tone(2.3, 523.0) + noise(2.3, 0.05, seed=52), noise(8.0, 0.2, seed=53)]

X86 = "processor\t: 0\nvendor_id\t: AuthenticAMD\nflags\t\t: fpu sse2 avx2 avx512f avx512bw {extra} xsave\n\n"
ARM = "processor\t: 0\nBogoMIPS\t: 50.00\nFeatures\t: fp asimd evtstrm {extra} atomics\n\n"


# ---------------------------------------------------------------------------- auto dtype on a CPU


@pytest.mark.parametrize(("text", "extra", "native"), [
    (X86, "avx512_bf16", True), (X86, "amx_bf16 amx_tile", True), (X86, "avx512_vnni", False),
    (ARM, "bf16 i8mm", True), (ARM, "sve2", False),
])
def test_the_cpu_flags_say_whether_bfloat16_is_native(tmp_path, monkeypatch, text, extra, native):
    monkeypatch.delenv(placement_module.CPU_BF16_ENV, raising=False)
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(text.format(extra=extra) * 2)
    got, why = cpu_bf16(cpuinfo)
    assert got is native
    assert (why == f"the CPU has {extra.split()[0]}") if native else ("no native bfloat16" in why)
    assert cpu_bf16(tmp_path / "missing") == (False, f"{tmp_path / 'missing'} is unreadable, so the CPU's bfloat16 "
                                                       "support is unknown")


@pytest.mark.parametrize("native", [True, False])
def test_auto_dtype_on_a_cpu_follows_its_bfloat16_support_and_says_why(monkeypatch, caplog, native):
    monkeypatch.setattr(placement_module, "cpu_bf16", lambda: (native, "the CPU says so"))
    with caplog.at_level(logging.INFO, logger="monitor.engine.placement"):
        auto = resolve_placement(ModelSettings(device="cpu"))
    assert auto == placement_module.Placement("cpu", "bfloat16" if native else "float32")
    lines = [r.getMessage() for r in caplog.records if r.name == "monitor.engine.placement"]
    assert len(lines) == 1 and lines[0].startswith(f"model.dtype auto on the CPU: {auto.dtype}, because the CPU says so")
    for explicit in ("float32", "bfloat16"):  # an explicit dtype wins, and needs no reason
        caplog.clear()
        assert resolve_placement(ModelSettings(device="cpu", dtype=explicit)).dtype == explicit
        assert not [r for r in caplog.records if r.name == "monitor.engine.placement"]


def test_auto_dtype_on_this_machine_reads_its_own_flags(monkeypatch, caplog, tiny_model_dir):
    """Unforced: /proc/cpuinfo decides, the load says so, and the loaded model is in that dtype."""
    monkeypatch.delenv(placement_module.CPU_BF16_ENV, raising=False)
    flags = {f for line in Path("/proc/cpuinfo").read_text().splitlines()
             if line.split(":")[0].strip().lower() in ("flags", "features") for f in line.split(":", 1)[1].split()}
    native = bool(flags & {"avx512_bf16", "amx_bf16", "bf16"})
    assert cpu_bf16()[0] is native
    if torch.cuda.is_available():
        pytest.skip("auto picks CUDA here")
    with caplog.at_level(logging.INFO, logger="monitor.engine.placement"):
        engine = Engine.load(ModelSettings(path=tiny_model_dir))
    assert next(engine.model.parameters()).dtype == (torch.bfloat16 if native else torch.float32)
    why = [r.getMessage() for r in caplog.records if r.name == "monitor.engine.placement"]
    assert len(why) == 1 and why[0].startswith(
        "model.dtype auto on the CPU: bfloat16, because the CPU has" if native else
        "model.dtype auto on the CPU: float32, because the CPU has no native bfloat16")
    monkeypatch.setenv(placement_module.CPU_BF16_ENV, "0")  # the override the suite runs under
    assert resolve_placement(ModelSettings()).dtype == "float32"


# ---------------------------------------------------------------------------- float64: the fast paths are exact


def _largest(got: list[dict[str, tuple[float, float]]], want: list[dict[str, tuple[float, float]]]) -> float:
    return max(abs(a - b) for g, w in zip(got, want, strict=True) for q in w for a, b in zip(g[q], w[q], strict=True))


@pytest.fixture(scope="module")
def engine64(tiny_model_dir):
    return Engine.load(ModelSettings(path=tiny_model_dir, device="cpu", dtype="float64"))


def test_in_float64_every_fast_path_equals_the_plain_forward(engine64):
    """Packed rows, the cropped encoder and a batch of windows restate the plain forward exactly:
    in float64 they agree with it to 1e-9, so their float32 and bfloat16 differences are rounding."""
    eng = engine64
    assert next(eng.model.parameters()).dtype == torch.float64
    assert (eng.encoder_path, eng.scoring_path, eng.batch_windows) == ("cropped", "packed", True)
    plain = [eng.score_plain(a, QUESTIONS) for a in WINDOWS]
    one_forward = eng.score_windows(WINDOWS, [QUESTIONS] * len(WINDOWS), packed=True, overhead=10**9)
    one_by_one = [eng.score_windows([a], [QUESTIONS], packed=True)[0] for a in WINDOWS]
    batched = eng.score_windows(WINDOWS, [QUESTIONS] * len(WINDOWS), packed=False)
    for path in (one_forward, one_by_one, batched):
        assert _largest(path, plain) <= 1e-9
    scores = [s for w in plain for s, _ in w.values()]
    assert max(scores) - min(scores) > 0.02, "scores barely differ: this comparison would prove little"
    encoder = CroppedEncoder(eng.model)
    clips = [eng.clip(a) for a in WINDOWS]
    features, frames = torch.cat([c.features["input_features"] for c in clips]), [c.frames for c in clips]
    assert features.dtype == torch.float64
    with torch.inference_mode():
        padded = encoder.padded(features, frames)
        for steps in (encoder.crop_seconds, None):  # rounded up to a crop length, and cropped exactly
            encoder.crop_seconds = steps
            assert float((encoder.cropped(features, frames) - padded).abs().max()) <= 1e-9
            start = 0
            for i, f in enumerate(frames):
                alone = encoder.cropped(features[i:i + 1], [f])
                assert alone.shape[0] == audio_tokens(f)
                assert float((alone - padded[start:start + alone.shape[0]]).abs().max()) <= 1e-9
                start += alone.shape[0]


# ---------------------------------------------------------------------------- bfloat16: the self-check


def test_tolerances_per_dtype():
    assert selfcheck.SCORE_TOLERANCE[torch.float32] == TOLERANCE[torch.float32] == 1e-4
    assert selfcheck.SCORE_TOLERANCE[torch.float64] == TOLERANCE[torch.float64] == 1e-9
    assert selfcheck.SCORE_TOLERANCE[torch.bfloat16] == 0.1
    assert TOLERANCE[torch.bfloat16] == 4 * 2.0**-7  # four rounding steps of the encoder's largest value
    assert TOLERANCE[torch.float16] == 4 * 2.0**-10
    assert selfcheck.SCORE_TOLERANCE[torch.float16] == pytest.approx(0.1 * 2 ** -1.5)


@pytest.fixture(scope="module")
def engine16(tiny_model_dir):
    return Engine.load(ModelSettings(path=tiny_model_dir, device="cpu", dtype="bfloat16"))


def test_in_bfloat16_the_self_check_takes_the_fast_paths_within_its_tolerance(tiny_model_dir, caplog):
    with caplog.at_level(logging.INFO, logger="monitor.engine.local.selfcheck"):
        eng = Engine.load(ModelSettings(path=tiny_model_dir, device="cpu", dtype="bfloat16"))
    assert next(eng.model.parameters()).dtype == torch.bfloat16
    assert (eng.encoder_path, eng.scoring_path, eng.batch_windows) == ("cropped", "packed", True)
    lines = [r.getMessage() for r in caplog.records]
    allowed = f"allowed {selfcheck.SCORE_TOLERANCE[torch.bfloat16]:.3g}"
    assert any(line.startswith(f"yes/no scoring of {tiny_model_dir}: packed") and allowed in line for line in lines)
    # what it accepted is rounding: within the tolerance, and no closer to the float32 scores than bfloat16 can be
    plain = [eng.score_plain(a, QUESTIONS) for a in WINDOWS[:2]]
    packed = eng.score_windows(WINDOWS[:2], [QUESTIONS] * 2)
    assert _largest(packed, plain) <= selfcheck.SCORE_TOLERANCE[torch.bfloat16]
    clips = [eng.clip(a) for a in WINDOWS[:2]]
    with torch.inference_mode():
        ok, diff, bound = CroppedEncoder(eng.model).check(torch.cat([c.features["input_features"] for c in clips]),
                                                          [c.frames for c in clips])
    assert ok and diff <= bound and bound >= TOLERANCE[torch.bfloat16]


def test_in_bfloat16_the_self_check_still_refuses_positions_that_run_on(tiny_model_dir, monkeypatch, caplog):
    """Its tolerance is rounding's, far below what a wrong path costs (here ~0.27 of a score)."""
    from monitor.engine.local import scorer as scorer_module
    from monitor.engine.local.positions import TokenPositions

    class RunOn(TokenPositions):
        def positions(self, packed, prefixes, features):
            return torch.arange(packed.input_ids.shape[1], device=packed.input_ids.device).expand_as(packed.input_ids)

    monkeypatch.setattr(scorer_module, "position_rule", lambda model, family: RunOn())
    with caplog.at_level(logging.INFO, logger="monitor.engine.local.selfcheck"):
        eng = Engine.load(ModelSettings(path=tiny_model_dir, device="cpu", dtype="bfloat16"))
    assert eng.scoring_path == "batched"
    assert any("batched, because packed scoring differs" in r.getMessage() for r in caplog.records)
    audio = WINDOWS[1]
    forced = eng.score_windows([audio], [QUESTIONS], packed=True)[0]
    plain = eng.score_plain(audio, QUESTIONS)
    assert _largest([forced], [plain]) > 3 * selfcheck.SCORE_TOLERANCE[torch.bfloat16]


def test_in_bfloat16_scores_are_read_in_float32_from_the_last_hidden_state(engine16):
    """Features are extracted in float32 and rounded once; the yes/no logits and softmax are float32."""
    eng = engine16
    audio = eng.fit(WINDOWS[1])
    extracted = eng.features(audio, sampling_rate=eng.sample_rate, return_tensors="pt")["input_features"]
    assert extracted.dtype == torch.float32
    assert torch.equal(eng.clip(audio).features["input_features"][..., :extracted.shape[-1]],
                       extracted.to(torch.bfloat16))
    last: list[torch.Tensor] = []
    hook = eng.model.get_output_embeddings().register_forward_hook(lambda m, args, out: last.append(args[0][:, -1]))
    try:
        got = eng.score_plain(audio, QUESTIONS)
    finally:
        hook.remove()
    weight = eng.model.get_output_embeddings().weight.detach().double()
    for hidden, question in zip(last, QUESTIONS, strict=True):
        logits = hidden.double() @ weight.T
        want = torch.sigmoid(logits[0, eng.yes_ids].logsumexp(-1) - logits[0, eng.no_ids].logsumexp(-1))
        assert abs(got[question][0] - float(want)) < 1e-6, question


# ---------------------------------------------------------------------------- between dtypes


def test_bfloat16_scores_are_within_the_bound_the_models_amplification_sets(engine64, engine16, tiny_model_dir):
    """A bfloat16 score is within G·(2^-8 + 2^-24)/4 of float32's, G the model's amplification of a rounding
    measured in float32 against float64 (docs/engine.md): the difference is bfloat16's rounding, amplified."""
    from monitor.engine.local.precision import amplification, between_dtypes

    eng32 = Engine.load(ModelSettings(path=tiny_model_dir, device="cpu", dtype="float32"))
    scores = {}
    for name, eng in (("float64", engine64), ("float32", eng32), ("bfloat16", engine16)):
        got = eng.score_windows(WINDOWS, [QUESTIONS] * len(WINDOWS))
        scores[name] = [s for w in got for s, _ in (w[q] for q in QUESTIONS)]
    g = max(amplification(a, b, torch.float32) for a, b in zip(scores["float32"], scores["float64"], strict=True))
    assert 1 < g < 1e3, g  # tiny: ~30 (a bound of ~0.03); a model this well conditioned makes the check meaningful
    bound = between_dtypes(g, torch.bfloat16)
    assert bound < 0.1
    diff = max(abs(a - b) for a, b in zip(scores["bfloat16"], scores["float32"], strict=True))
    assert 0 < diff <= bound, (diff, bound, g)
    assert between_dtypes(4e3, torch.bfloat16) == 1.0  # `small`'s amplification: no bound at all
