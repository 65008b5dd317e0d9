"""The benches' dtype comparison (bench/bydtype.py): the full-depth projection, the dtype list, one line per dtype."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import REPO

sys.path.insert(0, str(REPO))

from bench import bydtype  # noqa: E402


def test_projection_goes_through_the_shallow_depths_and_is_checked_by_the_deeper():
    # 400 ms that do not repeat, 250 ms per layer; the deepest depth measured 5 % slow
    measured = {1: 650.0, 2: 900.0, 4: 1400.0 * 1.05}
    fit = bydtype.projection(measured, full_layers=32)
    assert fit["fit_depths"] == [1, 2]
    assert fit["fixed"] == pytest.approx(400.0) and fit["per_layer"] == pytest.approx(250.0)
    assert fit["full"] == pytest.approx(400.0 + 32 * 250.0)
    (check,) = fit["checks"]
    assert check["depth"] == 4 and check["predicted"] == pytest.approx(1400.0)
    assert check["error_pct"] == pytest.approx((1400 - 1470) / 1470 * 100, abs=0.05)


def test_a_least_squares_line_over_more_depths():
    a, b = bydtype.fit_line({1: 1.0, 2: 3.0, 3: 5.0, 4: 7.0})
    assert (a, b) == pytest.approx((-1.0, 2.0))
    fit = bydtype.projection({1: 10.0, 2: 20.0, 3: 30.0}, full_layers=32, fit_depths=[1, 2, 3])
    assert fit["full"] == pytest.approx(320.0) and fit["checks"] == []
    with pytest.raises(ValueError):
        bydtype.fit_line({2: 1.0})
    disturbed = bydtype.projection({1: 3574.0, 2: 2926.1, 4: 5471.4}, full_layers=32)  # depth 1 slowed by other work
    assert disturbed["full"] is None and "failed" in disturbed


def test_dtypes_list_float32_first_and_unknown_names_refused():
    assert bydtype.parse_dtypes("bfloat16, float32,bfloat16") == ["float32", "bfloat16"]
    assert bydtype.parse_dtypes("float64,bfloat16") == ["float64", "bfloat16"]
    with pytest.raises(ValueError, match="float64"):
        bydtype.parse_dtypes("float8")
    assert bydtype.max_abs_diff([0.5, 0.25], [0.5, 0.2]) == pytest.approx(0.05)
    assert bydtype.max_abs_diff([0.5], None) is None


def test_engine_bench_prints_a_line_per_dtype_and_a_summary(tmp_path):
    """One run, three dtypes, each in its own process: float64's and bfloat16's scores against float32's on
    the same (bfloat16-stored) weights, float64's own scores equal to its plain forward, a peak RSS each, and
    bfloat16's difference within the bound the model's amplification (float32 against float64) sets."""
    proc = subprocess.run(
        [sys.executable, "bench/engine.py", "--size", "tiny", "--dtypes", "float64,float32,bfloat16", "--ps", "2",
         "--repeats", "1", "--no-naive", "--window", "2"],
        cwd=REPO, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [json.loads(x) for x in proc.stdout.splitlines() if x.startswith("{")]
    per_p = [x for x in lines if not x.get("summary")]
    summary = {x["dtype"]: x for x in lines if x.get("summary")}
    assert [x["dtype"] for x in per_p] == ["float32", "float64", "bfloat16"]  # float32 first: the others compare with it
    assert set(summary) == {"float32", "float64", "bfloat16"}
    for line in per_p:
        for key in ("dtype", "questions", "engine_ms", "naive_ms", "max_abs_diff_vs_fp32", "rss_mb", "model_rss_mb"):
            assert key in line, key
        assert line["questions"] == 2 and line["naive_ms"] is None and line["model_rss_mb"] > 0
        assert "scores" not in line  # the child's scores are the parent's business
    fp32, fp64, bf16 = per_p
    assert fp32["max_abs_diff_vs_fp32"] == 0.0 and fp32["engine_ms_vs_fp32"] == 1.0
    # float32's rounding, and only that: both children hear the same windows (sox dithers alike in each)
    assert 0 < fp64["max_abs_diff_vs_fp32"] < 1e-4
    assert summary["float64"]["engine_ms_vs_fp32"] > 0
    # docs/engine.md, "Precision": G·(2^-8 + 2^-24)/4 with G from float32 against float64 (tiny: ~30)
    bound = summary["bfloat16"]
    assert 1 < bound["amplification"] < 1e3 and 0 < bound["tolerance_vs_fp32"] < 0.1
    assert bound["within_tolerance"] is True and 0 < bf16["max_abs_diff_vs_fp32"] <= bound["tolerance_vs_fp32"]
    assert summary["float32"]["tolerance_vs_fp32"] is None
