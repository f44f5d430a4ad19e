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


def test_frontend_benchmark_structure(tmp_path):
    """``./launch.sh bench frontend`` on two kinds, one round: every side measured where it
    should be, the plugin's vectors equal the offline API's, CPU split by process, the derived
    figures and the GPU table computed from it. No speed is asserted."""
    out = tmp_path / "frontend"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "run.py"), "frontend", "--rounds", "1",
                           "--kinds", "text", "text-batch64", "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    res = json.loads((out / "frontend.json").read_text())
    assert res["parity"]["text"]["plugin"] >= 0.999999 and res["parity"]["text"]["plain"] >= 0.999999
    assert res["parity"]["text-batch64"]["plugin"] >= 0.999999
    assert res["parity"]["text-batch64"]["plain"] < 0.999999  # raw strings: no plain row
    assert set(res["kinds"]["text"]["sides"]) == {"plugin", "plain", "offline"}
    assert set(res["kinds"]["text-batch64"]["sides"]) == {"plugin", "offline"}
    plug = res["kinds"]["text"]["sides"]["plugin"]["8"]
    assert set(plug["by_process"]) >= {"api_server", "engine_core", "worker"}
    assert plug["items_per_s"]["median"] > 0 and plug["cpu_ms_per_item"]["median"] > 0
    assert plug["prompt_tokens_per_item"] > 10
    assert set(res["kinds"]["text"]["sides"]["offline"]) == {"1", "8", "batch"}
    assert "plugin_vs_plain_items_c8" in res["derived"]["text"]
    assert (out / "frontend.png").stat().st_size > 1000
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import gpu_paper

    rows = gpu_paper.table(res)
    assert [r["kind"] for r in rows] == ["text", "text-batch64"] and all(r["2B_H100_api_servers"] >= 1 for r in rows)


def test_gpu_probe_runs_on_the_tiny_checkpoint(tmp_path, embedding_ckpt):
    """The GPU owner's probe, here on CPU against the tiny checkpoint: one server, one kind."""
    out = tmp_path / "probe"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_probe.py"), "--model", str(embedding_ckpt),
                           "--kinds", "text", "--requests", "16", "--concurrency", "4", "--api-server-counts", "1",
                           "--server-arg=--max-num-seqs=16", "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    res = json.loads((out / "gpu-probe.json").read_text())
    (run,) = res["runs"]
    got = run["kinds"]["text"]
    assert got["items"] == 16 and got["items_per_s"] > 0 and got["tflop_per_item"] > 0
    assert got["cpu_ms_per_item"]["api_server"] > 0
    assert "| 1 | text |" in proc.stdout
