"""The numbers `compare` reports, by hand-computed tables: AUC, Wilson intervals, the threshold at a budget, the noise test."""

from __future__ import annotations

import pytest

from monitor.tuning.compare import refusal
from monitor.tuning.ranking import at_budget, paired_auc_gain, roc_auc, wilson


@pytest.mark.parametrize("pos, neg, auc", [
    ([0.9, 0.8], [0.1, 0.2], 1.0),
    ([0.1], [0.9], 0.0),
    ([0.5], [0.5], 0.5),  # a tie counts half
    ([0.9, 0.4], [0.5, 0.1], 0.75),  # 3 of 4 pairs in order
    ([0.6, 0.6, 0.2], [0.6, 0.1], (0.5 + 1 + 0.5 + 1 + 0 + 1) / 6),
    ([], [0.1], None),
    ([0.2], [], None),
])
def test_roc_auc(pos, neg, auc):
    assert roc_auc(pos, neg) == (auc if auc is None else pytest.approx(auc))


@pytest.mark.parametrize("hits, n, low, high", [
    (0, 10, 0.0, 0.277533),  # never 0..0: ten misses still allow a recall of a quarter
    (10, 10, 0.722467, 1.0),
    (5, 10, 0.236593, 0.763407),
    (3, 4, 0.300636, 0.954413),
    (1, 1, 0.206543, 1.0),
])
def test_wilson_interval(hits, n, low, high):
    lo, hi = wilson(hits, n)
    assert (lo, hi) == (pytest.approx(low, abs=5e-5), pytest.approx(high, abs=5e-5))  # tables use z = 1.96
    assert wilson(0, 0) is None


def test_threshold_at_a_budget():
    # 60 s of negatives: a budget of 1/h allows floor(1/60) = 0 false alarms; the threshold sits halfway
    # between the top negative (0.6) and the next positive (0.7)
    op = at_budget([0.9, 0.7, 0.5], [0.6, 0.2, 0.1], 60 / 3600, 1.0)
    assert (op.threshold, op.hits, op.positives, op.false_alarms, op.allowed) == (0.65, 2, 3, 0, 0)
    assert op.recall == pytest.approx(2 / 3) and op.fa_per_hour == 0.0
    # a budget of 120/h over 60 s allows 2: the third negative from the top bounds it
    op = at_budget([0.9, 0.7, 0.5], [0.6, 0.2, 0.1], 60 / 3600, 120.0)
    assert (op.threshold, op.hits, op.false_alarms, op.allowed) == (0.3, 3, 1, 2)
    assert op.fa_per_hour == pytest.approx(60.0)
    # no positive above the negatives: just above the top negative, nothing caught
    op = at_budget([0.3], [0.6], 0.01, 0.0)
    assert (op.threshold, op.hits, op.false_alarms) == (0.601, 0, 0)
    # no negatives: nothing to bound it; the lowest positive, rounded down; no rate
    op = at_budget([0.4567, 0.8], [], 0.0, 1.0)
    assert (op.threshold, op.hits, op.allowed, op.fa_per_hour) == (0.456, 2, None, None)
    # lifts below zero: a rule's threshold is at least 0
    op = at_budget([-0.01, 0.2], [-0.3], 0.01, 0.0)
    assert op.threshold == 0.0 and op.hits == 1
    # scores very close together still get a threshold strictly between them
    op = at_budget([0.50004], [0.50001], 0.01, 0.0)
    assert 0.50001 < op.threshold <= 0.50004 and op.hits == 1 and op.false_alarms == 0


def test_the_noise_test_on_auc():
    same = paired_auc_gain([0.9, 0.8, 0.3], [0.2, 0.5, 0.4], [0.9, 0.8, 0.3], [0.2, 0.5, 0.4])
    assert same.diff == 0.0 and not same.clear
    # four clips each: perfect separation against a coin still falls within the noise
    small = paired_auc_gain([0.5, 0.2, 0.7, 0.4], [0.6, 0.3, 0.5, 0.1], [0.9, 0.8, 0.85, 0.95], [0.1, 0.2, 0.15, 0.3])
    assert small.diff > 0.3 and small.low <= 0.3
    # twenty of each: a clear gain
    pos_a = [0.5 + 0.01 * (i % 7) for i in range(20)]
    neg_a = [0.5 + 0.01 * (i % 5) for i in range(20)]
    pos_b = [0.8 + 0.005 * i for i in range(20)]
    neg_b = [0.2 + 0.005 * i for i in range(20)]
    clear = paired_auc_gain(pos_a, neg_a, pos_b, neg_b)
    assert clear.clear and clear.low > 0 and clear.diff == pytest.approx(1.0 - roc_auc(pos_a, neg_a))
    assert paired_auc_gain([], [0.1], [], [0.1]) is None
    # deterministic: the same clips give the same verdict
    assert paired_auc_gain(pos_a, neg_a, pos_b, neg_b) == clear


def _report(*vs):
    phrasings = [{"n": 1, "current": True, "vs_current": None}]
    phrasings += [{"n": i + 2, "current": False, "vs_current": v} for i, v in enumerate(vs)]
    return {"phrasings": phrasings}


def test_apply_refuses_an_advantage_within_the_noise():
    report = _report({"auc_diff": 0.1, "low": -0.05, "high": 0.3, "clear": False},
                     {"auc_diff": 0.3, "low": 0.1, "high": 0.5, "clear": True}, None)
    assert "within the noise" in refusal(report, 2) and "--force" in refusal(report, 2)
    assert refusal(report, 3) is None
    assert refusal(report, 1) is None  # the current question: only its threshold changes
    assert "without both positive and negative clips" in refusal(report, 4)
    assert refusal(report, 5) == "--apply 5: there are phrasings 1 to 4"
