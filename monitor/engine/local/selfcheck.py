"""What the engine checks on the loaded model before it takes a shortcut.

Each shortcut restates, for speed, what the processor or the model would do anyway: building
the prompt prefix without the processor, running the audio encoder over a window's own frames
instead of 30 s of padding, and scoring all of a window's questions in one packed row that
shares the audio prefix. Each is used only where it gives this model's own result; otherwise
the engine takes the model's way, and says so once in the log. So a model family whose
positions or mask rules the packing does not follow gets right scores, only slower.

The checks use only the scoring core's public face (`Checked`): they ask it for clips and scores,
and pass the path to try as an argument; they never reach into it or change it while they look.
The scoring core sets what they decide.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import torch

from monitor.engine.errors import first_line
from monitor.engine.local.encoder import CroppedEncoder
from monitor.engine.local.precision import UNIT_ROUNDOFF, score_tolerance

if TYPE_CHECKING:
    from monitor.engine.families import Family
    from monitor.engine.layouts import Clip

log = logging.getLogger(__name__)

PROBE_SECONDS = (0.5, 7.3)  # the cropped encoder's probes: an odd and an even frame count, one batch
PACKING_PROBE_SECONDS = 2.3
BATCH_PROBE_SECONDS = (0.5, PACKING_PROBE_SECONDS)  # windows of different lengths in one forward
# Two questions of very different lengths: the second's positions start after the first's in the row.
PACKING_QUESTIONS = (
    "Is a dog barking?",
    "Is someone falling down or has a person fallen to the floor? Listen for a thud, a crash or a body hitting the "
    "ground, followed by a groan or someone calling for help. Answer yes or no.",
)
# Max |packed - plain| of a score (a probability) or its yes+no mass, per dtype: rounding only (`precision`).
SCORE_TOLERANCE = {dtype: score_tolerance(dtype) for dtype in UNIT_ROUNDOFF}
ONE_FORWARD = 10**9  # the cost of one more forward, in tokens, that keeps any batch of windows in one forward

Scores = list[dict[str, tuple[float, float]]]  # per window: {prompt: (score, mass)}


class Checked(Protocol):
    """What the checks ask of the scoring core (`scorer.Scorer`)."""

    name: str
    model: Any
    family: Family
    layout: Any  # a `layouts.ProcessorLayout` where the fast prefix is checked
    sample_rate: int
    dtype: torch.dtype
    packed: bool

    def fit(self, audio: np.ndarray) -> np.ndarray: ...

    def clip(self, audio: np.ndarray) -> Clip: ...

    def score_windows(self, audios: Sequence[np.ndarray], prompts: Sequence[Sequence[str]], packed: bool | None = None,
                      overhead: int | None = None) -> Scores: ...

    def score_plain(self, audio: np.ndarray, prompts: Sequence[str]) -> dict[str, tuple[float, float]]: ...


def probe(seconds: float, sample_rate: int) -> np.ndarray:
    """A deterministic test signal: a tone in noise."""
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    rng = np.random.default_rng(int(seconds * 1000))
    return (0.2 * np.sin(2 * np.pi * 330.0 * t) + rng.normal(0.0, 0.05, len(t))).astype(np.float32)


def fast_features_agree(engine: Checked) -> bool:
    """Whether building the prefix ourselves gives exactly what the processor gives.

    The processor re-tokenises the whole prompt and re-checks its inputs on every call;
    the fast path only runs the feature extractor and splices cached ids. It is used only if
    it agrees with the processor on this model (it follows Qwen2-Audio's conventions).
    """
    for seconds in (1.0, 7.3):
        t = np.arange(int(seconds * engine.sample_rate)) / engine.sample_rate
        audio = (0.3 * np.sin(2 * np.pi * 440.0 * t)).astype(np.float32)
        try:
            fast_ids, fast = engine.layout.prefix_fast(audio, extract_on="cpu")  # the processor extracts on the CPU
            slow_ids, slow = engine.layout.prefix_processor(audio)
        except Exception as exc:  # noqa: BLE001 - any mismatch means: use the processor
            log.info("prefix fast path unavailable for %s (%s); using the processor", engine.name, exc)
            return False
        if fast_ids != slow_ids or fast.keys() != slow.keys() or any(
                not torch.equal(fast[k].cpu(), slow[k].cpu()) for k in fast):
            log.info("prefix fast path disagrees with the processor of %s; using the processor", engine.name)
            return False
    return True


def cropped_encoder(engine: Checked) -> CroppedEncoder | None:
    """The encoder over each window's own frames, if it gives this model's padded encoder's output.

    Checked on the loaded model (its weights, dtype, attention kernel and device), on probe
    windows batched as the engine batches them and each alone. Where it does not agree, the
    model is not shaped like Qwen2-Audio, or its family's encoder is never cropped, every window
    keeps the model's own 30-second path.
    """
    family = engine.family
    if family.crop_encoder is False:
        log.info("audio encoder of %s: the model's own, over the features its processor makes (cropping unavailable: "
                 "%s's encoder is not Qwen2-Audio's, says its family)", engine.name, family.title)
        return None
    try:
        encoder = CroppedEncoder(engine.model)
        clips = [engine.clip(probe(s, engine.sample_rate)) for s in PROBE_SECONDS]
        with torch.inference_mode():
            ok, diff, allowed = encoder.check(torch.cat([c.features["input_features"] for c in clips]),
                                              [c.frames for c in clips])
    except Exception as exc:  # noqa: BLE001 - any doubt means: the model's own padded encoder
        log.info("audio encoder of %s: the model's own, over the features its processor makes (cropping unavailable: "
                 "%s)", engine.name, exc)
        return None
    probes = "/".join(f"{s:g}" for s in PROBE_SECONDS)
    if not ok:
        log.warning("audio encoder of %s: padded to 30 s for every window, because cropped to the window it differs "
                    "from the padded run by %.3g (more than %.3g) on %s s probes", engine.name, diff, allowed, probes)
        return None
    log.info("audio encoder of %s: cropped to each window's frames (agrees with the 30 s padded run within %.3g, "
             "allowed %.3g, on %s s probes)", engine.name, diff, allowed, probes)
    return encoder


def packed_scoring(engine: Checked) -> bool:
    """Whether the packed shared-prefix path gives the plain forward's scores on this model.

    Checked on the loaded model (its positions, mask rules, dtype, attention kernel and
    device) with a probe window and two questions; where it differs, or fails, every window's
    questions go through the model as one padded batch of full prompts instead.
    """
    audio = engine.fit(probe(PACKING_PROBE_SECONDS, engine.sample_rate))
    questions = [q for q in PACKING_QUESTIONS if engine.layout.suffix_ids(q) is not None]
    if len(questions) < len(PACKING_QUESTIONS):
        log.info("yes/no scoring of %s: batched (the probe questions do not split on the audio prefix)", engine.name)
        return False
    try:
        with torch.inference_mode():
            packed = engine.score_windows([audio], [questions], packed=True)
            plain = engine.score_plain(audio, questions)
    except Exception as exc:  # noqa: BLE001 - any doubt means: the plain prompts, batched
        log.warning("yes/no scoring of %s: batched (packed scoring failed: %s)", engine.name, first_line(exc))
        return False
    diff = _largest(packed, [plain], questions)
    allowed = score_tolerance(engine.dtype)
    if not diff <= allowed:  # NaN fails too
        log.warning("yes/no scoring of %s: batched, because packed scoring differs from the plain forward by %.3g "
                    "(more than %.3g) on a %g s probe and %d questions", engine.name, diff, allowed,
                    PACKING_PROBE_SECONDS, len(questions))
        return False
    log.info("yes/no scoring of %s: packed (largest difference from the plain forward %.3g, allowed %.3g, on a "
             "%g s probe and %d questions)", engine.name, diff, allowed, PACKING_PROBE_SECONDS, len(questions))
    return True


def _largest(got: Scores, plain: Scores, questions: list[str]) -> float:
    """Largest |got - plain| of any score or mass, window by window (NaN if any is NaN)."""
    diffs = [abs(a - b) for w, want in enumerate(plain) for q in questions
             for a, b in zip(got[w][q], want[q], strict=True)]
    return float("nan") if any(d != d for d in diffs) else max(diffs)


def window_batching(engine: Checked) -> bool:
    """Whether windows of different lengths answered in one forward get the scores each gets alone.

    Not every audio encoder encodes a batch of clips as it encodes each alone (Qwen3-Omni's, in
    transformers 5.24, does not); where batching changes scores, each window gets its own forward
    (and its own generate() for text questions).
    """
    audios = [engine.fit(probe(s, engine.sample_rate)) for s in BATCH_PROBE_SECONDS]
    questions = list(PACKING_QUESTIONS)
    try:
        with torch.inference_mode():  # on the path the engine chose, all windows in one forward
            got = engine.score_windows(audios, [questions] * len(audios), packed=engine.packed, overhead=ONE_FORWARD)
            plain = [engine.score_plain(a, questions) for a in audios]
    except Exception as exc:  # noqa: BLE001 - any doubt means: one window per forward
        log.warning("windows of %s: one per forward (a batch of windows failed: %s)", engine.name, type(exc).__name__)
        return False
    diff = _largest(got, plain, questions)
    allowed = score_tolerance(engine.dtype)
    if not diff <= allowed:
        log.warning("windows of %s: one per forward, because a batch of windows of different lengths differs from "
                    "each window alone by %.3g (more than %.3g)", engine.name, diff, allowed)
        return False
    log.info("windows of %s: batched (a batch of windows of different lengths equals each alone within %.3g, "
             "allowed %.3g)", engine.name, diff, allowed)
    return True
