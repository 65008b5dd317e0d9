"""How far a fast path may differ from the model's own forward, per dtype (docs/engine.md, "Precision").

Every fast path (packed rows, the cropped encoder, a batch of windows) restates the plain forward
exactly: in float64 they agree to 2e-15 on the tiny and the `small` models (tests/test_precision.py,
bench/engine.py --dtypes float64). What remains in a narrower dtype is rounding, and the load-time
check (`selfcheck`) allows that much:

- float32 rounds every product and sum (unit roundoff u = 2^-24); a path that orders a sum
  otherwise rounds otherwise. A score is sigmoid(log-odds), so |d score| <= |d log-odds| / 4, and
  each of two forwards misses the exact log-odds by G·u, G being the model's amplification of a
  rounding (measured against float64: 30 on tiny, 3.9e3 on `small`). 2·G·u/4 with G = 3.4e3 is
  the 1e-4 allowed, for a score and (relative to its largest value) for the encoder's output.
- bfloat16 multiplies in 8 bits but sums in float32 and rounds each operation's output once (a
  step of 2^-7 of the value). Two paths then differ where a float32 sum lands on the other side
  of a step: whole steps, which spread through the layers as any rounding does. The encoder's
  output may differ by 4 steps of its largest value (2^-5). A score's difference is measured,
  not scaled from float32's: on right paths it was 9.4e-4 (tiny) and 0.048 (`small`, 8 s window),
  1.6e3 to 1.2e4 times float32's, between sqrt(2u/u32) = 362 (lone flips) and u/u32 = 65536
  (every value rounded apart); twice the largest, 0.1, is allowed. A wrong path costs more (0.27
  on tiny with positions that run on through the row; tests/test_precision.py).
- float16 (u = 2^-11): the encoder 4 steps (2^-8); a score bfloat16's times sqrt(2^-11 / 2^-8).
- float64: the paths are exact; 1e-9 allows float64's rounding (2^-53) only.

Scores are read in float32 whatever the dtype (`answers.AnswerHead`).

Between two dtypes (`between_dtypes`) the paths do not matter, the model's conditioning does: a
bfloat16 score misses the exact one by G·u/4 and float32's by 1/65536 of that, so a bfloat16
score is within G·(2^-8 + 2^-24)/4 of float32's, G measured in float32 against float64 (in
bfloat16, whose sums are float32, G was smaller still: 16 against 30 on tiny, 840 against 3.9e3
on `small`). That is a bound for a model, not one number: about 0.03 on tiny; vacuous (above 1) on the
random-weight `small`, whose answers in two dtypes are then unrelated (docs/engine.md).
"""

from __future__ import annotations

import math

import torch

UNIT_ROUNDOFF = {torch.float64: 2.0**-53, torch.float32: 2.0**-24, torch.bfloat16: 2.0**-8, torch.float16: 2.0**-11}
FLOAT32 = 1e-4  # max |fast - plain| of a score or its mass, and of the encoder's output relative to its largest
BFLOAT16_SCORE = 0.1  # twice the largest difference measured on a right path (see above)
FLOAT64 = 1e-9
STEPS = 4  # rounding steps of its largest value the encoder's output may differ by, in a dtype that sums wider


def score_tolerance(dtype: torch.dtype) -> float:
    """Max |fast - plain| of a score or mass (probabilities) the load-time check allows in `dtype`."""
    if dtype == torch.float64:
        return FLOAT64
    if dtype == torch.float32:
        return FLOAT32
    u = UNIT_ROUNDOFF.get(dtype, UNIT_ROUNDOFF[torch.bfloat16])  # an unknown dtype: as coarse as bfloat16
    return BFLOAT16_SCORE * min(1.0, math.sqrt(u / UNIT_ROUNDOFF[torch.bfloat16]))


def amplification(got: float, exact: float, dtype: torch.dtype) -> float:
    """G: how much a model amplifies a rounding into a score, from one score in `dtype` and the same in float64.

    4·|got - exact| / u: the log-odds' miss per unit roundoff where a score is near 0.5 (|d score| <=
    |d log-odds| / 4), and no more elsewhere. Taken on the scores themselves, not their log-odds: near
    0 or 1 a float32 probability's own rounding would swamp the log-odds.
    """
    return 4 * abs(got - exact) / UNIT_ROUNDOFF[dtype]


def between_dtypes(g: float, dtype: torch.dtype, reference: torch.dtype = torch.float32) -> float:
    """Max |score in `dtype` - score in `reference`| on a model of amplification `g` (at most 1)."""
    return min(1.0, g * (UNIT_ROUNDOFF[dtype] + UNIT_ROUNDOFF[reference]) / 4)


def encoder_tolerance(dtype: torch.dtype) -> float:
    """Max |cropped - padded| of the encoder's output, relative to its largest |value| (at least 1), in `dtype`."""
    if dtype == torch.float64:
        return FLOAT64
    if dtype == torch.float32:
        return FLOAT32
    u = UNIT_ROUNDOFF.get(dtype, UNIT_ROUNDOFF[torch.bfloat16])
    return STEPS * 2 * u
