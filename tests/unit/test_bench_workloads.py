"""Benchmark workloads: seeded, selectable by name, and a fresh set per variant (so timed runs
never reuse what vLLM's prefix/multimodal caches already hold)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
import workloads  # noqa: E402


def _key(item: dict):
    img = item.get("image")
    return (item.get("text"), None if img is None else (img.size, np.asarray(img).tobytes()[:4096]))


@pytest.mark.parametrize("name", ["mixed", "text-short", "rerank-1x20"])
def test_same_variant_is_deterministic_and_variants_differ(name, tmp_path):
    kind, a = workloads.build(name, tmp_path, variant=1)
    _, again = workloads.build(name, tmp_path, variant=1)
    _, other = workloads.build(name, tmp_path, variant=2)
    items = (lambda x: x["documents"] + [x["query"]]) if kind == "reranker" else (lambda x: x)
    assert [_key(i) for i in items(a)] == [_key(i) for i in items(again)]
    shared = {_key(i) for i in items(a)} & {_key(i) for i in items(other)}
    assert len(shared) <= len(items(a)) // 4, f"{len(shared)} items shared between variants"
    assert len(items(a)) == len(items(other))  # same shape


def test_images_span_the_pixel_bounds(tmp_path):
    _, imgs = workloads.build("images", tmp_path)
    pixels = [i["image"].width * i["image"].height for i in imgs]
    assert min(pixels) < 4096 and max(pixels) > 1843200  # below min_pixels, above max_pixels


def test_unknown_workload_is_named(tmp_path):
    with pytest.raises(SystemExit, match="unknown workload 'nope'"):
        workloads.build("nope", tmp_path)
