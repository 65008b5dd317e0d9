"""What the engine checks on the loaded model before it takes a shortcut.

Both shortcuts restate, for speed, what the processor or the model would do anyway: building
the prompt prefix without the processor, and running the audio encoder over a window's own
frames instead of 30 s of padding. Each is used only where it gives this model's own result;
otherwise the engine takes the model's way, and says so once in the log.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import numpy as np
import torch

from monitor.engine.encoder import CroppedEncoder

if TYPE_CHECKING:
    from monitor.engine.engine import Engine

log = logging.getLogger(__name__)

PROBE_SECONDS = (0.5, 7.3)  # the cropped encoder's probes: an odd and an even frame count, one batch


def probe(seconds: float, sample_rate: int) -> np.ndarray:
    """A deterministic test signal: a tone in noise."""
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    rng = np.random.default_rng(int(seconds * 1000))
    return (0.2 * np.sin(2 * np.pi * 330.0 * t) + rng.normal(0.0, 0.05, len(t))).astype(np.float32)


def fast_features_agree(engine: Engine) -> bool:
    """Whether building the prefix ourselves gives exactly what the processor gives.

    The processor re-tokenises the whole prompt and re-checks its inputs on every call;
    the fast path only runs the feature extractor and splices cached ids. It is used only if
    it agrees with the processor on this model (it follows Qwen2-Audio's conventions).
    """
    for seconds in (1.0, 7.3):
        t = np.arange(int(seconds * engine.sample_rate)) / engine.sample_rate
        audio = (0.3 * np.sin(2 * np.pi * 440.0 * t)).astype(np.float32)
        try:
            fast_ids, fast = engine._prefix_fast(audio, extract_on="cpu")  # the processor extracts on the CPU
            slow_ids, slow = engine._prefix_processor(audio)
        except Exception as exc:  # noqa: BLE001 - any mismatch means: use the processor
            log.info("prefix fast path unavailable for %s (%s); using the processor", engine.name, exc)
            return False
        if fast_ids != slow_ids or fast.keys() != slow.keys() or any(
                not torch.equal(fast[k].cpu(), slow[k].cpu()) for k in fast):
            log.info("prefix fast path disagrees with the processor of %s; using the processor", engine.name)
            return False
    return True


def cropped_encoder(engine: Engine) -> CroppedEncoder | None:
    """The encoder over each window's own frames, if it gives this model's padded encoder's output.

    Checked on the loaded model (its weights, dtype, attention kernel and device), on probe
    windows batched as the engine batches them and each alone. Where it does not agree, or the
    model is not shaped like Qwen2-Audio, every window keeps the model's own 30-second path.
    """
    try:
        encoder = CroppedEncoder(engine.model)
        clips = [engine._clip(probe(s, engine.sample_rate)) for s in PROBE_SECONDS]
        with torch.inference_mode():
            ok, diff, allowed = encoder.check(torch.cat([c.features["input_features"] for c in clips]),
                                              [c.frames for c in clips])
    except Exception as exc:  # noqa: BLE001 - any doubt means: the model's own padded encoder
        log.info("audio encoder of %s: padded to 30 s for every window (cropping unavailable: %s)", engine.name, exc)
        return None
    probes = "/".join(f"{s:g}" for s in PROBE_SECONDS)
    if not ok:
        log.warning("audio encoder of %s: padded to 30 s for every window, because cropped to the window it differs "
                    "from the padded run by %.3g (more than %.3g) on %s s probes", engine.name, diff, allowed, probes)
        return None
    log.info("audio encoder of %s: cropped to each window's frames (agrees with the 30 s padded run within %.3g, "
             "allowed %.3g, on %s s probes)", engine.name, diff, allowed, probes)
    return encoder
