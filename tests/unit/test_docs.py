"""The docs site builds with ``mkdocs build --strict`` (a broken link, a missing page or a
figures marker without its JSON fails), its figures are generated from committed JSON, and the
README stays a front door."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MKDOCS = ROOT / ".venv-docs" / "bin" / "mkdocs"


def _hook():
    spec = importlib.util.spec_from_file_location("figures_hook", ROOT / "docs" / "_hooks" / "figures.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    assert MKDOCS.exists(), "run ./launch.sh setup first: it creates .venv-docs with MkDocs"
    out = tmp_path_factory.mktemp("site")
    run = subprocess.run([str(MKDOCS), "build", "--strict", "-d", str(out)], cwd=ROOT, capture_output=True,
                         text=True, timeout=300, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    return out


def test_the_site_builds_strictly_with_every_page(site):
    nav_pages = ["serving", "versions", "clients", "offline", "corpus", "long-videos", "parity", "performance",
                 "serving-cost", "reliability", "security", "architecture", "troubleshooting", "api"]
    for page in nav_pages:
        assert (site / page / "index.html").is_file(), page
    api = (site / "api" / "index.html").read_text()
    for name in ("Qwen3VLEmbedder", "Qwen3VLReranker", "EmbeddingClient", "RerankClient", "register",
                 "run_index", "search", "JobSettings"):
        assert name in api, name


def test_the_figures_are_the_committed_runs(site):
    """Every figures marker is replaced, and a cell of each table is the JSON's own value."""
    for page in ("parity", "performance", "corpus", "serving-cost"):
        assert "<!-- figures:" not in (site / page / "index.html").read_text(), page
    parity = (site / "parity" / "index.html").read_text()
    for kind, fmt in (("embedding", ".7f"), ("reranker", ".2e")):
        run = json.loads((ROOT / "docs" / "data" / "parity" / f"{kind}.json").read_text())
        name, cells = next(iter(run["rows"].items()))
        column = run["columns"][-1]
        assert f"Run of {run['date']}" in parity
        assert format(cells[column], fmt) in parity, (kind, name, column)
    perf = (site / "performance" / "index.html").read_text()
    bench = json.loads((ROOT / "benchmarks" / "published" / "2026-11-29-full" / "results.json").read_text())
    assert bench["date"] in perf
    assert f"{bench['offline'][0]['ratio']:.2f}×" in perf
    corpus = (site / "corpus" / "index.html").read_text()
    assert "<!-- figures:" not in corpus
    index = json.loads((ROOT / "benchmarks" / "published" / "2026-12-02-index" / "results.json").read_text())
    assert f"Run of {index['date']}" in corpus
    assert f"{index['rows']['local']['vs_process']['median']:.2f}x" in corpus
    cost = (site / "serving-cost" / "index.html").read_text()
    published = ROOT / "benchmarks" / "published" / "2026-12-03-serving"  # the account's run
    front = json.loads((ROOT / "benchmarks" / "published" / "2026-12-03-responses" / "frontend.json").read_text())
    assert f"Run of {front['date']}" in cost
    cell = front["kinds"]["photo-512"]["sides"]["plugin"]["8"]["cpu_ms_per_item"]["median"]
    assert f"{cell:.2f}" in cost
    account = json.loads((published / "account.json").read_text())
    assert f"{sum(account[0]['psutil_ms_per_item'].values()):.3f}" in cost


def test_a_marker_without_its_json_fails_the_build():
    hook = _hook()
    with pytest.raises(FileNotFoundError, match="docs/data/parity/nothing.json does not exist"):
        hook.on_page_markdown("<!-- figures: parity docs/data/parity/nothing.json -->", None, None, None)
    with pytest.raises(ValueError, match="unknown kind 'tables'"):
        hook.render("tables", "docs/data/parity/embedding.json")


def test_the_readme_is_a_front_door():
    text = (ROOT / "README.md").read_text()
    lines = text.splitlines()
    assert len(lines) <= 200, len(lines)
    first_screen = "\n".join(lines[:30])
    assert "./launch.sh demo" in first_screen and "./launch.sh test" in first_screen
    for link in [part.split(")")[0] for part in text.split("](")[1:]]:
        if not link.startswith(("http", "#")):
            assert (ROOT / link.split("#")[0]).exists(), link


def test_the_readme_gpu_table_is_the_published_runs():
    """README "The GPU, on paper" is gpu_paper.py's table of the published frontend run, row for row."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("gpu_paper", ROOT / "benchmarks" / "gpu_paper.py")
    gpu = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu)
    run = json.loads((ROOT / "benchmarks" / "published" / "2026-12-03-responses" / "frontend.json").read_text())
    table = [line for line in gpu.markdown(gpu.table(run)).splitlines() if line.startswith("|")]
    readme = (ROOT / "README.md").read_text()
    assert len(table) == 2 + len(run["kinds"])
    for line in table:
        assert line in readme, line

