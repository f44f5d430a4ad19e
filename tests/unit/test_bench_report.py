"""Benchmark figures: median and range of alternating rounds, and what the check refuses.
No timing is asserted: the rows here are made-up numbers."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
import offline  # noqa: E402
import report  # noqa: E402


@pytest.mark.parametrize("ratios, median", [([1.0, 3.0, 2.0], 2.0), ([4.0, 1.0, 2.0, 3.0], 2.5), ([0.5], 0.5)])
def test_summary_is_median_and_range(ratios, median):
    s = offline.summary(ratios)
    assert s["ratio"] == pytest.approx(median)
    assert (s["ratio_min"], s["ratio_max"]) == (min(ratios), max(ratios))
    assert s["spread"] == pytest.approx(max(max(ratios) / median - 1, 1 - min(ratios) / median))


def test_alternate_swaps_who_goes_first_and_times_both_on_the_same_sets():
    seen = []

    def side(name):
        def fn(x):
            seen.append((name, x))
            return x
        return fn

    rows, worst = offline.alternate(side("ref"), side("vllm"), [["a", "b"], ["c"], ["d"]], lambda g, r: 0.0 if g == r else 1.0)
    assert [r["first"] for r in rows] == ["reference", "vllm", "reference"]
    assert seen[:4] == [("ref", "a"), ("ref", "b"), ("vllm", "a"), ("vllm", "b")]
    assert seen[4:6] == [("vllm", "c"), ("ref", "c")]
    assert worst == [0.0] * 4 and all(r["ratio"] > 0 for r in rows)


def _row(rounds):
    ratios = [r["ratio"] for r in rounds]
    rate = {"seconds": 1.0, "items_per_s": 10.0, "tokens_per_s": 100.0}
    return {"model": "tiny", "workload": "w", "dtype": "float32", "parity": True, "timed_min_cosine": 1.0,
            "items": 10, "items_per_round": 5, "rounds": rounds, "reference": rate, "vllm": rate,
            **offline.summary(ratios)}


def _res(row):
    return {"mode": "quick", "date": "d", "machine": {"cpu": "c", "cores": 2, "memory_gib": 1},
            "versions": {"vllm": "v", "torch": "t", "transformers": "x"}, "offline": [row], "serving": []}


def test_check_wants_alternating_rounds_and_markdown_prints_the_range():
    one = _row([{"round": 0, "reference_s": 1.0, "vllm_s": 0.5, "ratio": 2.0}])
    assert any("fewer than 2 alternating rounds" in p for p in report.check(_res(one)))
    three = _row([{"round": k, "reference_s": 1.0, "vllm_s": v, "ratio": 1.0 / v} for k, v in enumerate((0.5, 0.8, 1.0))])
    assert not any("offline" in p for p in report.check(_res(three)))
    md = report.markdown(_res(three))
    assert "**1.25×** (1.00–2.00, 3 rounds)" in md
