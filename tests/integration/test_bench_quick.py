"""`./launch.sh bench` (the quick benchmark) runs as a test in CI's second step
(``./launch.sh test-long``, marker ``bench``): at ~6 min it would be a quarter of the suite.

No timing is asserted: only that the run finished, parity passed before timing, every figure is
present and positive, and no request failed (``report.check``)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.bench]
ROOT = Path(__file__).resolve().parents[2]


def test_quick_benchmark(tmp_path):
    out = tmp_path / "bench"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "run.py"), "--check", "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "check passed" in proc.stdout
    res = json.loads((out / "results.json").read_text())
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import report

    assert report.check(res) == []
    assert all(o["parity"] for o in res["offline"])
    assert {o["workload"] for o in res["offline"]} >= {"mixed", "rerank-1x20"}
    assert (out / "results.md").read_text().startswith("# qwen3vl-vllm benchmark")
    assert (out / "throughput.png").stat().st_size > 1000
    # keep a copy of the figures for the README/notes
    keep = ROOT / ".cache" / "reports"
    keep.mkdir(parents=True, exist_ok=True)
    (keep / "bench-quick.md").write_text((out / "results.md").read_text())
