"""How well one phrasing's scores separate positive clips from negative ones, honestly on small sets.

Pure functions of score lists, tested by hand-computed tables:

- `roc_auc`: the chance that a random positive scores above a random negative (ties count half),
  the Mann-Whitney statistic; None without a positive or a negative.
- `at_budget`: the threshold with the highest recall whose false alarms stay within a budget of
  false alarms per hour of negative audio. On a set of a few minutes the budget allows
  floor(budget x hours) negatives at or above the threshold — usually none — and the threshold
  is placed halfway between the highest negative it must not catch and the next positive, so
  that neither side sits on the edge.
- `wilson`: the Wilson score interval of a proportion (95 %): honest with 3 of 4 where the
  plain k/n ± z·sqrt(p(1-p)/n) interval collapses to nothing at 0/n or n/n.
- `paired_auc_gain`: whether one phrasing separates better than another on the same clips: a
  paired, stratified bootstrap of the difference of their AUCs (positives and negatives resampled
  separately, the same resample for both phrasings). An advantage counts only when the 95 %
  interval of the difference lies wholly above zero.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

Z95 = 1.959963984540054
RESAMPLES = 2000
SEED = 23  # the bootstrap is deterministic: the same clips give the same verdict


def roc_auc(positives: Sequence[float], negatives: Sequence[float]) -> float | None:
    """P(a positive scores above a negative), ties half; None when either side is empty."""
    if not positives or not negatives:
        return None
    return float(_wins(positives, negatives).mean())


def _wins(positives: Sequence[float], negatives: Sequence[float]) -> np.ndarray:
    """[i, j] = 1 where positive i scores above negative j, 0.5 on a tie, else 0."""
    p = np.asarray(positives, dtype=np.float64)[:, None]
    n = np.asarray(negatives, dtype=np.float64)[None, :]
    return (p > n) + 0.5 * (p == n)


def wilson(hits: int, n: int, z: float = Z95) -> tuple[float, float] | None:
    """The Wilson score interval of hits/n; None when n is 0."""
    if n <= 0:
        return None
    p = hits / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass(frozen=True)
class Operating:
    """A threshold and what it does on the set."""

    threshold: float
    hits: int  # positives at or above it
    positives: int
    false_alarms: int  # negatives at or above it
    negatives: int
    negative_hours: float
    allowed: int | None  # false alarms the budget allows on this set (None: no negatives to measure them)

    @property
    def recall(self) -> float | None:
        return self.hits / self.positives if self.positives else None

    @property
    def fa_per_hour(self) -> float | None:
        return self.false_alarms / self.negative_hours if self.negative_hours > 0 else None


def at_budget(positives: Sequence[float], negatives: Sequence[float], negative_hours: float,
              max_fa_per_hour: float, low: float = 0.0, high: float = 1.0) -> Operating:
    """The threshold (within [low, high], as a rule may be set) with the best recall inside the budget."""
    neg = sorted(negatives, reverse=True)
    allowed = int(math.floor(max_fa_per_hour * negative_hours + 1e-9)) if neg else None
    floor = neg[allowed] if allowed is not None and allowed < len(neg) else None  # must stay above this one
    above = sorted(p for p in positives if floor is None or p > floor)
    if floor is None:
        t = _round_down(above[0]) if above else low
    elif above:
        t = _between(floor, above[0])
    else:
        t = _just_above(floor)
    t = min(high, max(low, t))
    return Operating(t, sum(1 for p in positives if p >= t), len(positives), sum(1 for n in negatives if n >= t),
                     len(negatives), negative_hours, allowed)


def _round_down(x: float) -> float:
    return math.floor(x * 1000) / 1000


def _between(lo: float, hi: float) -> float:
    """A short number halfway between lo (excluded) and hi (included)."""
    mid = (lo + hi) / 2
    for digits in (2, 3, 4, 6):
        t = round(mid, digits)
        if lo < t <= hi:
            return t
    return hi


def _just_above(x: float) -> float:
    for digits in (3, 4, 6):
        t = math.ceil(x * 10**digits + 1e-9) / 10**digits
        if t > x:
            return t
    return math.nextafter(x, math.inf)


@dataclass(frozen=True)
class Gain:
    """One phrasing's AUC over another's on the same clips, with the bootstrap's 95 % interval."""

    diff: float
    low: float
    high: float

    @property
    def clear(self) -> bool:
        """An advantage beyond the noise: the whole interval above zero."""
        return self.low > 0


def paired_auc_gain(pos_a: Sequence[float], neg_a: Sequence[float], pos_b: Sequence[float], neg_b: Sequence[float],
                    resamples: int = RESAMPLES, seed: int = SEED) -> Gain | None:
    """AUC(b) - AUC(a), phrasings a and b scored on the same clips in the same order; None without both sides."""
    if not pos_a or not neg_a or len(pos_a) != len(pos_b) or len(neg_a) != len(neg_b):
        return None
    wins = _wins(pos_b, neg_b) - _wins(pos_a, neg_a)  # per pair of clips: b's win minus a's
    rng = np.random.default_rng(seed)
    n_pos, n_neg = wins.shape
    wp = rng.multinomial(n_pos, np.full(n_pos, 1 / n_pos), size=resamples).astype(np.float64)
    wn = rng.multinomial(n_neg, np.full(n_neg, 1 / n_neg), size=resamples).astype(np.float64)
    diffs = np.einsum("bi,ij,bj->b", wp, wins, wn) / (n_pos * n_neg)
    low, high = np.quantile(diffs, [0.025, 0.975])
    return Gain(float(wins.mean()), float(low), float(high))
